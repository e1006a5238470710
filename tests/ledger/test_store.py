"""The store against real SQLite and real PostgreSQL: what an append, a proof or an erasure does.

Every test that takes ``database`` runs twice, on a SQLite file and on a PostgreSQL schema of its
own. Nothing of ours is mocked: a test appends through the public ``Ledger`` API and reads back
through it, the database, an export and the offline verifier.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import multiprocessing
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.engine import Connection, Engine

from ledger import merkle
from ledger.checkpoint import open_checkpoint
from ledger.cosignature import CosignatureVerifier, Cosigner, verify_cosignatures
from ledger.database import create_engine
from ledger.entry import GENESIS_PREV, parse_entry
from ledger.errors import (
    EntryError,
    ProofError,
    SignatureError,
    StorageError,
    VerificationError,
)
from ledger.export import write_export
from ledger.keys import generate_signing_key, load_signing_key
from ledger.models import ENTRIES
from ledger.note import NoteSigner, NoteVerifier, parse_note
from ledger.store import Appended, Ledger, Record
from ledger.verify import VerifyResult, verify_export
from tests.conftest import Database

ORIGIN = "test.mandate.example/ledger"
SUBJECT_KEY = bytes(range(32))


def new_signer() -> NoteSigner:
    return NoteSigner(ORIGIN, Ed25519PrivateKey.generate())


def verifier_of(signer: NoteSigner) -> NoteVerifier:
    return NoteVerifier.from_vkey(signer.vkey)


@pytest.fixture
def engine(database: Database) -> Iterator[Engine]:
    engine = create_engine(database.url, schema=database.schema)
    yield engine
    engine.dispose()


@pytest.fixture
def signer() -> NoteSigner:
    return new_signer()


def open_ledger(engine: Engine, signer: NoteSigner | None, **kwargs: Any) -> Ledger:
    kwargs.setdefault("checkpoint_every", 1000)
    kwargs.setdefault("checkpoint_interval", None)
    kwargs.setdefault("subject_key", SUBJECT_KEY)
    return Ledger(engine, origin=ORIGIN, signer=signer, **kwargs).open()


def record(subject: str, **body: Any) -> Record:
    return Record("proposal", "agent-7", subject, {"action": "restart", **body})


def all_entries(ledger: Ledger) -> list[bytes]:
    return list(ledger.entries())


def assert_one_chain(ledger: Ledger) -> list[bytes]:
    """Every stored entry: seq 0, 1, 2, … and each prev the leaf hash of the one before."""
    entries = all_entries(ledger)
    assert len(entries) == ledger.size()
    prev = GENESIS_PREV
    for seq, data in enumerate(entries):
        entry = parse_entry(data)
        assert entry.seq == seq
        assert entry.prev == prev, f"seq {seq} does not link to seq {seq - 1}"
        leaf = hashlib.sha256(b"\x00" + data).digest()
        assert ledger.leaf_hash(seq) == leaf
        prev = leaf.hex()
    return entries


def export_and_verify(
    ledger: Ledger, path: Path, keys: list[NoteVerifier], trusted: str | None = None
) -> VerifyResult:
    with path.open("wb") as out:
        write_export(ledger, out)
    return verify_export(path, keys, trusted_checkpoint=trusted)


# -- the shape of the log ------------------------------------------------------------------------


def test_entries_are_contiguous_from_a_genesis_key_entry_and_chained(
    engine: Engine, signer: NoteSigner
) -> None:
    with open_ledger(engine, signer) as ledger:
        appended = [ledger.append(**one) for one in _three_appends()]
        entries = assert_one_chain(ledger)

    assert [a.seq for a in appended] == [1, 2, 3]
    genesis = parse_entry(entries[0])
    assert genesis.kind == "key"
    assert genesis.prev == "0" * 64
    assert genesis.body == {"vkey": signer.vkey, "from_size": 1}
    for a in appended:
        # What the append returned is what was stored, and its leaf hash is RFC 9162's.
        assert entries[a.seq] == a.data
        assert a.leaf_hash == hashlib.sha256(b"\x00" + a.data).digest()
        assert a.leaf_hash == merkle.leaf_hash(a.data)
    stored = parse_entry(entries[2])
    assert (stored.kind, stored.actor, stored.subject) == ("approval", "bob", "change-2")
    assert stored.body == {"amount": "12.50", "ok": True}


def _three_appends() -> list[dict[str, Any]]:
    return [
        {"kind": "proposal", "actor": "agent-7", "subject": "change-1", "body": {"n": 1}},
        {
            "kind": "approval",
            "actor": "bob",
            "subject": "change-2",
            "body": {"amount": "12.50", "ok": True},
        },
        {
            "kind": "decision",
            "actor": "gateway",
            "subject": "change-3",
            "body": {"verdict": "allow"},
        },
    ]


def test_the_entry_time_comes_from_the_injected_clock(engine: Engine, signer: NoteSigner) -> None:
    moment = dt.datetime(2031, 2, 3, 4, 5, 6, 789, tzinfo=dt.UTC)
    with open_ledger(engine, signer, clock=lambda: moment) as ledger:
        appended = ledger.append("audit", actor="a", subject="s", body={})
    assert appended.time == "2031-02-03T04:05:06.000789Z"
    assert parse_entry(appended.data).time == appended.time


# -- proofs and roots ------------------------------------------------------------------------


@pytest.fixture
def forty(engine: Engine, signer: NoteSigner) -> Iterator[tuple[Ledger, list[bytes]]]:
    """A ledger of 40 entries (checkpoints among them) and the leaf hashes of all of them."""
    with open_ledger(engine, signer, checkpoint_every=9) as ledger:
        while ledger.size() < 40:
            ledger.append("audit", actor="a", subject=f"s{ledger.size()}", body={})
        assert ledger.size() == 40
        leaves = [merkle.leaf_hash(data) for data in ledger.entries()]
        yield ledger, leaves


def test_roots_match_the_reference_tree_at_every_size(forty: tuple[Ledger, list[bytes]]) -> None:
    ledger, leaves = forty
    assert ledger.root(0) == merkle.EMPTY_ROOT
    for size in range(1, 41):
        assert ledger.root(size) == merkle.root_hash(leaves[:size]), size
    assert ledger.root() == merkle.root_hash(leaves)


def test_inclusion_proofs_match_the_reference_and_verify(
    forty: tuple[Ledger, list[bytes]],
) -> None:
    ledger, leaves = forty
    for size in range(1, 41):
        root = merkle.root_hash(leaves[:size])
        for index in range(size):
            proof = ledger.inclusion_proof(index, size)
            assert proof == merkle.inclusion_proof(index, leaves[:size]), (index, size)
            assert merkle.verify_inclusion(leaves[index], index, size, proof, root)


def test_consistency_proofs_match_the_reference_and_verify(
    forty: tuple[Ledger, list[bytes]],
) -> None:
    ledger, leaves = forty
    roots = [merkle.root_hash(leaves[:size]) for size in range(41)]
    for size2 in range(1, 41):
        for size1 in range(1, size2 + 1):
            proof = ledger.consistency_proof(size1, size2)
            assert proof == merkle.consistency_proof(size1, leaves[:size2]), (size1, size2)
            assert merkle.verify_consistency(size1, size2, proof, roots[size1], roots[size2])


def test_proofs_beyond_the_log_are_refused(forty: tuple[Ledger, list[bytes]]) -> None:
    ledger, _ = forty
    with pytest.raises(ProofError, match="beyond"):
        ledger.inclusion_proof(3, 41)
    with pytest.raises(ProofError, match="not in a tree"):
        ledger.inclusion_proof(40, 40)
    with pytest.raises(ProofError, match="beyond"):
        ledger.consistency_proof(5, 41)
    with pytest.raises(ProofError, match="0 < size1 <= size2"):
        ledger.consistency_proof(0, 5)
    with pytest.raises(ProofError, match="0 < size1 <= size2"):
        ledger.consistency_proof(6, 5)
    with pytest.raises(ProofError, match="beyond"):
        ledger.root(41)


# -- checkpoints -----------------------------------------------------------------------------


def test_a_checkpoint_every_n_entries_each_also_an_entry(
    engine: Engine, signer: NoteSigner
) -> None:
    every = 5
    with open_ledger(engine, signer, checkpoint_every=every) as ledger:
        for i in range(24):
            ledger.append("audit", actor="a", subject=f"s{i}", body={"i": i})
        entries = all_entries(ledger)
        kinds = [parse_entry(data).kind for data in entries]
        at = [seq for seq, kind in enumerate(kinds) if kind == "checkpoint"]
        # Exactly `every` other entries (the genesis key entry counts) before each checkpoint.
        assert at == [5, 11, 17, 23, 29]
        assert len(entries) == 1 + 24 + len(at)
        for seq in at:
            stored = ledger.checkpoint_at(seq)
            assert stored is not None
            assert stored.seq == seq
            note = parse_entry(entries[seq]).body["note"]
            assert note == stored.note
            checkpoint, by = open_checkpoint(note, [verifier_of(signer)], origin=ORIGIN)
            assert by.vkey == signer.vkey
            # A checkpoint entry at seq N signs the tree of the N entries before it.
            assert checkpoint.size == seq
            assert checkpoint.root == stored.root_hash == ledger.root(seq)
        assert ledger.latest_checkpoint() == ledger.checkpoint_at(29)


def test_a_checkpoint_on_demand_covers_everything_and_is_not_repeated(
    engine: Engine, signer: NoteSigner
) -> None:
    with open_ledger(engine, signer) as ledger:
        assert ledger.latest_checkpoint() is None
        ledger.append("audit", actor="a", subject="s", body={})
        ledger.append("audit", actor="a", subject="t", body={})
        made = ledger.checkpoint()
        assert made.size == 3
        assert ledger.size() == 4  # the checkpoint is entry 3
        entry = ledger.entry(3)
        assert entry.kind == "checkpoint"
        assert entry.body == {"note": made.note}
        checkpoint, _ = open_checkpoint(made.note, [verifier_of(signer)], origin=ORIGIN)
        assert (checkpoint.size, checkpoint.root) == (3, ledger.root(3))
        # Nothing new since: the same checkpoint, and no entry for it.
        assert ledger.checkpoint() == made
        assert ledger.size() == 4
        ledger.append("audit", actor="a", subject="u", body={})
        assert ledger.checkpoint().size == 5


def test_a_checkpoint_is_signed_when_the_interval_passes(
    engine: Engine, signer: NoteSigner
) -> None:
    with open_ledger(engine, signer, checkpoint_interval=0.05) as ledger:
        appended = ledger.append("audit", actor="a", subject="s", body={})
        # No entry count triggers it (the default is 1000): only the interval can.
        covering = _wait_for(
            lambda: (cp := ledger.latest_checkpoint()) is not None and cp.size > appended.seq and cp
        )
        assert ledger.entry(covering.seq).kind == "checkpoint"
        checkpoint, _ = open_checkpoint(covering.note, [verifier_of(signer)], origin=ORIGIN)
        assert checkpoint.root == ledger.root(checkpoint.size)


def _wait_for(probe: Any, attempts: int = 400) -> Any:
    """Poll ``probe`` until it returns something true (a bounded wait, not a timing claim)."""
    done = threading.Event()
    for _ in range(attempts):
        value = probe()
        if value:
            return value
        done.wait(0.025)
    raise AssertionError("the ledger never did it")


# -- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "path"),
    [
        (Record("proposal", "a", "s", {"amount": 1.5}), "body.amount"),
        (Record("proposal", "a", "s", {"params": {"ratio": 1.0}}), "body.params.ratio"),
        (Record("proposal", "a", "s", {"name": "Zoe\u0301"}), "body.name"),
        (Record("proposal", "Zoe\u0301", "s", {}), "actor"),
        (Record("Proposal", "a", "s", {}), "kind"),
        (Record("proposal ", "a", "s", {}), "kind"),
        (Record("proposal", "a", "s", {"n": 2**53}), "body.n"),
        (Record("proposal", "a", "s", {"x": "1"}, ("missing",), "C-1"), "body.missing"),
    ],
    ids=[
        "float",
        "nested-float",
        "non-nfc",
        "non-nfc-actor",
        "kind-case",
        "kind-space",
        "big-int",
        "seal-missing",
    ],
)
def test_a_bad_record_is_refused_and_nothing_is_written(
    engine: Engine, signer: NoteSigner, bad: Record, path: str
) -> None:
    with open_ledger(engine, signer) as ledger:
        before = ledger.size()
        with pytest.raises(EntryError) as refused:
            ledger.append_many([record("good-before"), bad, record("good-after")])
        assert refused.value.path == path
        with pytest.raises(EntryError):
            ledger.append(
                bad.kind,
                actor=bad.actor,
                subject=bad.subject,
                body=bad.body,
                sealed=bad.sealed,
                data_subject=bad.data_subject,
            )
        with pytest.raises(EntryError):
            asyncio.run(ledger.append_many_async([bad]))
        assert ledger.size() == before
        # The ledger still works afterwards.
        assert ledger.append("audit", actor="a", subject="s", body={}).seq == before


def test_a_failing_caller_hook_fails_only_its_own_append(
    engine: Engine, signer: NoteSigner
) -> None:
    # The caller's own rows, committed atomically with its entries: through ``rows`` (one
    # insert for the whole batch) or ``in_transaction`` (any SQL).
    decisions = sa.Table(
        "decisions", sa.MetaData(), sa.Column("subject", sa.Text, primary_key=True)
    )
    decisions.create(engine)
    gate, inside = threading.Event(), threading.Event()

    def hold(conn: Connection, appended: list[Appended]) -> None:
        inside.set()
        assert gate.wait(30)

    def by_hook(subject: str) -> dict[str, Any]:
        def hook(conn: Connection, appended: list[Appended]) -> None:
            conn.execute(sa.insert(decisions).values(subject=subject))
            if subject == "bad-hook":
                raise RuntimeError("the caller's own rows were refused")

        return {"in_transaction": hook}

    def by_rows(row: str) -> dict[str, Any]:
        return {"rows": lambda appended: [(decisions, {"subject": row})]}

    requests = {
        "good-0": by_rows("good-0"),
        "good-1": by_hook("good-1"),
        "bad-hook": by_hook("bad-hook"),
        "good-2": by_rows("good-2"),
        "bad-rows": by_rows("good-0"),  # a row that good-0 already brings
        "good-3": by_hook("good-3"),
    }

    async def scenario() -> list[Any]:
        held = asyncio.ensure_future(
            ledger.append_many_async([record("held")], in_transaction=hold)
        )
        # The writer is now inside a transaction; what is queued meanwhile forms the next batch.
        assert await asyncio.to_thread(inside.wait, 30)
        tasks = [
            asyncio.ensure_future(ledger.append_many_async([record(subject)], **hooks))
            for subject, hooks in requests.items()
        ]
        for _ in range(3):
            await asyncio.sleep(0)  # every task runs up to its wait: all of them are queued
        gate.set()
        await held
        return list(await asyncio.gather(*tasks, return_exceptions=True))

    with open_ledger(engine, signer) as ledger:
        outcomes = dict(zip(requests, asyncio.run(scenario()), strict=True))
        # The caller's own exception comes back as it was raised; a refused row as StorageError.
        bad_hook, bad_rows = outcomes.pop("bad-hook"), outcomes.pop("bad-rows")
        assert isinstance(bad_hook, RuntimeError)
        assert "refused" in str(bad_hook)
        assert isinstance(bad_rows, StorageError)
        landed = {subject: result[0].seq for subject, result in outcomes.items()}
        entries = assert_one_chain(ledger)
        subjects_in_log = [parse_entry(data).subject for data in entries]
        assert "bad-hook" not in subjects_in_log
        assert "bad-rows" not in subjects_in_log
        for subject, seq in landed.items():
            assert subjects_in_log.count(subject) == 1
            assert parse_entry(entries[seq]).subject == subject
        with engine.connect() as conn:
            kept = sorted(conn.execute(sa.select(decisions.c.subject)).scalars())
        assert kept == sorted(landed) == ["good-0", "good-1", "good-2", "good-3"]


# -- concurrency inside one process ----------------------------------------------------------


def test_32_threads_append_contiguously_with_fewer_commits_than_appends(
    engine: Engine, signer: NoteSigner, tmp_path: Path
) -> None:
    threads, each = 32, 10
    with open_ledger(engine, signer, checkpoint_every=50) as ledger:
        results = _append_from_threads(ledger, threads, each)
        seqs = [a.seq for a in results]
        assert len(seqs) == len(set(seqs)) == threads * each
        entries = assert_one_chain(ledger)
        subjects = [parse_entry(data).subject for data in entries]
        for t in range(threads):
            for i in range(each):
                assert subjects.count(f"{t}-{i}") == 1
        # Group commit: appends waiting together share a transaction, and a transaction's
        # entries share their time. (Counting SQLAlchemy's commit events saw none on SQLite,
        # whose ledger transactions go to the driver.)
        assert len({parse_entry(entries[seq]).time for seq in seqs}) < threads * each
        result = export_and_verify(ledger, tmp_path / "export.jsonl", [verifier_of(signer)])
        assert result.size >= 1 + threads * each


def test_a_commit_delay_gathers_appenders_that_come_one_after_another(
    engine: Engine, signer: NoteSigner
) -> None:
    # Eight appenders, each appending again a moment after its append returns: without a
    # delay a commit takes whoever is queued at that instant (one or two; 26 commits on
    # PostgreSQL, when this was written); with one, the writer waits for the others to come
    # back, so commits hold most of them (PostgreSQL's commit_delay). A transaction's entries
    # share their time: the times count the commits.
    each = 10
    with open_ledger(engine, signer, commit_delay=0.05) as ledger:
        results = _append_from_threads(ledger, 8, each, pause=0.005)
        entries = assert_one_chain(ledger)
    commits = len({parse_entry(entries[a.seq]).time for a in results})
    # Ten rounds of eight: a round split in two, at worst, and the first commits alone.
    assert commits <= 2 * each + 2, commits


def test_asyncio_appenders(engine: Engine, signer: NoteSigner) -> None:
    async def scenario() -> list[list[Appended]]:
        return list(
            await asyncio.gather(
                *(ledger.append_many_async([record(f"a{i}"), record(f"b{i}")]) for i in range(40))
            )
        )

    with open_ledger(engine, signer) as ledger:
        results = asyncio.run(scenario())
        entries = assert_one_chain(ledger)
    seqs = [a.seq for pair in results for a in pair]
    assert len(set(seqs)) == 80
    for i, (first, second) in enumerate(results):
        # A request's records land together, in order.
        assert second.seq == first.seq + 1
        assert parse_entry(entries[first.seq]).subject == f"a{i}"
        assert parse_entry(entries[second.seq]).subject == f"b{i}"


def test_an_async_caller_sees_its_hook_fail(engine: Engine, signer: NoteSigner) -> None:
    class Refused(Exception):
        pass

    def refuse(conn: Connection, appended: list[Appended]) -> None:
        raise Refused("refused by the caller")

    with open_ledger(engine, signer) as ledger:
        size = ledger.size()
        with pytest.raises(Refused, match="refused by the caller"):
            asyncio.run(ledger.append_many_async([record("x")], in_transaction=refuse))
        assert ledger.size() == size


# -- several Ledger objects, reopening -------------------------------------------------------


def test_two_ledgers_on_one_database_take_turns(
    database: Database, signer: NoteSigner, tmp_path: Path
) -> None:
    first = create_engine(database.url, schema=database.schema)
    second = create_engine(database.url, schema=database.schema)
    try:
        with (
            open_ledger(first, signer, checkpoint_every=4) as a,
            open_ledger(second, signer, checkpoint_every=4) as b,
        ):
            turns = []
            for i in range(12):
                ledger = a if i % 3 else b
                turns.append(ledger.append("audit", actor="x", subject=f"turn-{i}", body={}).seq)
                if i == 7:
                    b.checkpoint()
            entries = assert_one_chain(a)
            assert assert_one_chain(b) == entries
            subjects = [parse_entry(data).subject for data in entries]
            assert [subjects[seq] for seq in turns] == [f"turn-{i}" for i in range(12)]
            assert turns == sorted(turns)
            result = export_and_verify(a, tmp_path / "export.jsonl", [verifier_of(signer)])
            latest = b.latest_checkpoint()
            assert latest is not None
            assert result.size == latest.size == b.size() - 1
    finally:
        first.dispose()
        second.dispose()


def test_reopening_continues_the_chain(
    database: Database, signer: NoteSigner, tmp_path: Path
) -> None:
    engine = create_engine(database.url, schema=database.schema)
    with open_ledger(engine, signer, checkpoint_every=3) as ledger:
        for i in range(5):
            ledger.append("audit", actor="a", subject=f"before-{i}", body={})
        size, tail = ledger.size(), ledger.leaf_hash(ledger.size() - 1)
    engine.dispose()

    engine = create_engine(database.url, schema=database.schema)
    try:
        with open_ledger(engine, signer, checkpoint_every=3) as ledger:
            assert ledger.size() == size  # reopening writes nothing
            after = ledger.append("audit", actor="a", subject="after", body={})
            assert after.seq == size
            assert parse_entry(after.data).prev == tail.hex()
            for i in range(4):
                ledger.append("audit", actor="a", subject=f"after-{i}", body={})
            entries = assert_one_chain(ledger)
            assert [parse_entry(data).kind for data in entries].count("key") == 1
            export_and_verify(ledger, tmp_path / "export.jsonl", [verifier_of(signer)])
    finally:
        engine.dispose()


# -- keys ----------------------------------------------------------------------------------------


def test_key_rotation_verifies_with_the_old_key_alone_and_the_new_key_alone(
    engine: Engine, tmp_path: Path
) -> None:
    old, new = new_signer(), new_signer()
    with open_ledger(engine, old, checkpoint_every=4) as ledger:
        for i in range(6):
            ledger.append("audit", actor="a", subject=f"s{i}", body={})
        handover = ledger.rotate_key(new)
        # The key entry, then a checkpoint by the old key that covers it.
        key_seq = handover.size - 1
        key_entry = ledger.entry(key_seq)
        assert key_entry.kind == "key"
        assert key_entry.body == {"vkey": new.vkey, "from_size": key_seq + 2, "previous": old.vkey}
        open_checkpoint(handover.note, [verifier_of(old)], origin=ORIGIN)
        with pytest.raises(SignatureError):
            open_checkpoint(handover.note, [verifier_of(new)], origin=ORIGIN)
        assert ledger.keys() == [(1, old.vkey), (key_seq + 2, new.vkey)]
        assert ledger.signer is new

        for i in range(9):
            ledger.append("audit", actor="a", subject=f"t{i}", body={})
        latest = ledger.checkpoint()
        open_checkpoint(latest.note, [verifier_of(new)], origin=ORIGIN)
        with pytest.raises(SignatureError):
            open_checkpoint(latest.note, [verifier_of(old)], origin=ORIGIN)

        path = tmp_path / "export.jsonl"
        by_old = export_and_verify(ledger, path, [verifier_of(old)])
        by_new = verify_export(path, [verifier_of(new)])
    assert by_old.size == by_new.size == latest.size
    assert by_old.keys == by_new.keys == (old.vkey, new.vkey)
    assert by_old.final_key == by_new.final_key == new.vkey
    with pytest.raises(VerificationError, match="neither a key you trust"):
        verify_export(path, [verifier_of(new_signer())])


def test_a_ledger_reopened_after_rotation_needs_the_new_key(
    database: Database, tmp_path: Path
) -> None:
    old, new = new_signer(), new_signer()
    engine = create_engine(database.url, schema=database.schema)
    try:
        with open_ledger(engine, old) as ledger:
            ledger.append("audit", actor="a", subject="s", body={})
            ledger.rotate_key(new)
        with open_ledger(engine, new) as ledger:
            ledger.append("audit", actor="a", subject="t", body={})
            assert open_checkpoint(ledger.checkpoint().note, [verifier_of(new)], origin=ORIGIN)
            export_and_verify(ledger, tmp_path / "export.jsonl", [verifier_of(old)])
    finally:
        engine.dispose()


def test_a_signer_that_is_not_the_current_key_cannot_sign(
    database: Database, signer: NoteSigner
) -> None:
    every = 3
    first = create_engine(database.url, schema=database.schema)
    second = create_engine(database.url, schema=database.schema)
    stranger = new_signer()
    try:
        with open_ledger(first, signer, checkpoint_every=every) as rightful:
            rightful.append("audit", actor="a", subject="s", body={})
            size, latest = rightful.size(), rightful.latest_checkpoint()
            assert (size, latest) == (2, None)  # one entry short of a checkpoint
            try:
                wrong = open_ledger(second, stranger, checkpoint_every=every)
            except SignatureError:
                wrong = None  # refusing to open at all would fail closed too
            if wrong is not None:
                with wrong:
                    with pytest.raises(SignatureError, match="current key") as refused:
                        wrong.checkpoint()
                    assert stranger.vkey in str(refused.value)
                    assert signer.vkey in str(refused.value)
                    # An append that makes a checkpoint due fails with it, and is not written.
                    with pytest.raises(SignatureError):
                        wrong.append("audit", actor="a", subject="u", body={})
            assert rightful.size() == size
            assert rightful.latest_checkpoint() is None
            # The rightful key still signs, and the log is one chain.
            assert rightful.append("audit", actor="a", subject="v", body={}).seq == size
            assert rightful.latest_checkpoint() is not None
            checkpoint, _ = open_checkpoint(
                rightful.entry(size + 1).body["note"], [verifier_of(signer)], origin=ORIGIN
            )
            assert checkpoint.size == size + 1
            assert_one_chain(rightful)
    finally:
        first.dispose()
        second.dispose()


def test_a_read_only_ledger_reads_but_refuses_appends(engine: Engine, signer: NoteSigner) -> None:
    with open_ledger(engine, signer) as writer:
        writer.append("audit", actor="a", subject="s", body={"n": 1})
        writer.checkpoint()
        size, root = writer.size(), writer.root()
    with open_ledger(engine, None) as reader:
        assert reader.size() == size
        assert reader.root() == root
        assert reader.entry(1).body == {"n": 1}
        assert reader.inclusion_proof(1, size) == merkle.inclusion_proof(
            1, [merkle.leaf_hash(d) for d in reader.entries()]
        )
        with pytest.raises(StorageError, match="read-only"):
            reader.append("audit", actor="a", subject="s", body={})
        with pytest.raises(StorageError, match="read-only"):
            asyncio.run(reader.append_many_async([record("s")]))
        with pytest.raises(StorageError):
            reader.checkpoint()
        with pytest.raises(StorageError):
            reader.rotate_key(new_signer())
        assert reader.size() == size


def _writers_alive() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "ledger-writer" and t.is_alive())


def test_a_stranger_key_is_refused_at_open_and_leaves_no_writer_behind(
    database: Database, signer: NoteSigner
) -> None:
    first = create_engine(database.url, schema=database.schema)
    second = create_engine(database.url, schema=database.schema)
    try:
        with open_ledger(first, signer) as rightful:
            rightful.append("audit", actor="a", subject="s", body={})
        writers = _writers_alive()
        with pytest.raises(SignatureError, match="current key"):
            open_ledger(second, new_signer())
        assert _writers_alive() == writers
    finally:
        first.dispose()
        second.dispose()


def test_appends_racing_close_land_or_are_refused_but_never_hang(
    engine: Engine, signer: NoteSigner
) -> None:
    ledger = open_ledger(engine, signer)
    outcomes: list[str] = []
    lock = threading.Lock()

    def hammer() -> None:
        for n in range(300):
            try:
                ledger.append("audit", actor="a", subject=f"s{n}", body={})
                result = "landed"
            except StorageError:
                result = "refused"
            with lock:
                outcomes.append(result)
            if result == "refused":
                return

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    _wait_for(lambda: len(outcomes) >= 20)
    ledger.close()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "an append never returned"
    assert "refused" in outcomes
    with open_ledger(engine, signer) as reopened:
        entries = assert_one_chain(reopened)
        audits = [e for e in entries if parse_entry(e).kind == "audit"]
        assert len(audits) == outcomes.count("landed")


# -- the pipelined writer -------------------------------------------------------------------------
#
# While one batch commits, callers build the next one on top of it; the writer checks, under the
# append lock, that the log still ends where that build starts, and builds again when it does
# not. These tests make the log move under a build that was made ahead: another process appends,
# a batch fails after the one before it committed, the ledger closes with appends in flight.


def append_in_another_process(
    url: str, schema: str | None, key_path: str, subjects: list[str]
) -> None:
    """Another gateway process: its own engine, ledger and writer (``spawn``: nothing shared)."""
    engine = create_engine(url, schema=schema)
    signer = load_signing_key(Path(key_path), ORIGIN)
    try:
        with Ledger(engine, origin=ORIGIN, signer=signer, checkpoint_interval=None).open() as other:
            for subject in subjects:
                other.append("audit", actor="other-process", subject=subject, body={})
    finally:
        engine.dispose()


def start_another_process(
    database: Database, key_path: Path, subjects: list[str]
) -> multiprocessing.process.BaseProcess:
    context = multiprocessing.get_context("spawn")
    process = context.Process(
        target=append_in_another_process,
        args=(database.url, database.schema, str(key_path), subjects),
    )
    process.start()
    return process


def finish(process: multiprocessing.process.BaseProcess) -> None:
    process.join(timeout=120)
    assert process.exitcode == 0


def test_a_batch_built_ahead_is_built_again_when_another_process_appended_first(
    database: Database, engine: Engine, tmp_path: Path
) -> None:
    key_path = tmp_path / "ledger-signing-key.pem"
    signer = generate_signing_key(key_path, ORIGIN)
    with open_ledger(engine, signer) as ledger:
        first = ledger.append("audit", actor="a", subject="before", body={})
        # The writer now expects the log to end at `first`, and the next append is built on
        # top of it as soon as it is queued; another process moves the end meanwhile.
        finish(start_another_process(database, key_path, ["other-1", "other-2"]))
        after = ledger.append("audit", actor="a", subject="after", body={})
        entries = assert_one_chain(ledger)
    assert after.seq == first.seq + 3
    assert [parse_entry(e).subject for e in entries[first.seq :]] == [
        "before",
        "other-1",
        "other-2",
        "after",
    ]
    assert entries[after.seq] == after.data
    assert parse_entry(after.data).prev == merkle.leaf_hash(entries[after.seq - 1]).hex()


def test_pipelined_appends_and_another_process_make_one_chain(
    database: Database, engine: Engine, tmp_path: Path
) -> None:
    key_path = tmp_path / "ledger-signing-key.pem"
    signer = generate_signing_key(key_path, ORIGIN)
    theirs = [f"other-{i}" for i in range(60)]
    appenders, each = 24, 12

    async def ours(ledger: Ledger) -> list[int]:
        async def appender(a: int) -> list[int]:
            seqs = []
            for i in range(each):
                done = await ledger.append_many_async([record(f"ours-{a}-{i}")])
                seqs.append(done[0].seq)
            return seqs

        results = await asyncio.gather(*(appender(a) for a in range(appenders)))
        return [seq for seqs in results for seq in seqs]

    with open_ledger(engine, signer, checkpoint_every=40) as ledger:
        ledger.append("audit", actor="a", subject="first", body={})
        other = start_another_process(database, key_path, theirs)
        try:
            seqs = asyncio.run(ours(ledger))
        finally:
            finish(other)
        entries = assert_one_chain(ledger)
        subjects = [parse_entry(e).subject for e in entries]
        mine = [f"ours-{a}-{i}" for a in range(appenders) for i in range(each)]
        assert sorted(s for s in subjects if s.startswith("ours-")) == sorted(mine)
        assert [s for s in subjects if s.startswith("other-")] == theirs
        for seq in seqs:  # what each append returned is where its entry is
            assert subjects[seq].startswith("ours-")
        assert len(set(seqs)) == len(seqs)
        result = export_and_verify(ledger, tmp_path / "export.jsonl", [verifier_of(signer)])
    assert result.size >= len(entries) - 1


def _refuse_kind_poison(engine: Engine, database: Database) -> None:
    """A database-side refusal of entries of kind 'poison' (a storage failure on demand)."""
    with engine.begin() as conn:
        if database.backend == "sqlite":
            conn.exec_driver_sql(
                "CREATE TRIGGER refuse_poison BEFORE INSERT ON ledger_entries "
                "WHEN NEW.kind = 'poison' BEGIN SELECT RAISE(ABORT, 'poison refused'); END"
            )
        else:
            conn.exec_driver_sql(
                "CREATE FUNCTION refuse_poison() RETURNS trigger AS $$ BEGIN "
                "IF NEW.kind = 'poison' THEN RAISE EXCEPTION 'poison refused'; END IF; "
                "RETURN NEW; END $$ LANGUAGE plpgsql"
            )
            conn.exec_driver_sql(
                "CREATE TRIGGER refuse_poison BEFORE INSERT ON ledger_entries "
                "FOR EACH ROW EXECUTE FUNCTION refuse_poison()"
            )


def test_a_batch_that_fails_after_the_one_before_it_committed(
    database: Database, engine: Engine, signer: NoteSigner
) -> None:
    gate, inside = threading.Event(), threading.Event()

    def hold(conn: Connection, appended: list[Appended]) -> None:
        inside.set()
        assert gate.wait(30)

    async def scenario(ledger: Ledger) -> tuple[list[Appended], list[Any]]:
        held = asyncio.ensure_future(
            ledger.append_many_async([record("held")], in_transaction=hold)
        )
        assert await asyncio.to_thread(inside.wait, 30)
        # Queued while the batch before commits, so built on top of it, as one batch.
        queued = [
            Record("audit", "a", "good-a", {}),
            Record("poison", "a", "bad", {}),
            Record("audit", "a", "good-b", {}),
            Record("audit", "a", "good-c", {}),
        ]
        tasks = [asyncio.ensure_future(ledger.append_many_async([r])) for r in queued]
        for _ in range(3):
            await asyncio.sleep(0)
        gate.set()
        return await held, list(await asyncio.gather(*tasks, return_exceptions=True))

    with open_ledger(engine, signer) as ledger:
        ledger.append("audit", actor="a", subject="first", body={})
        _refuse_kind_poison(engine, database)
        held, (good_a, bad, good_b, good_c) = asyncio.run(scenario(ledger))
        assert isinstance(bad, StorageError)
        assert "poison refused" in str(bad)
        landed = [held[0], good_a[0], good_b[0], good_c[0]]
        assert [a.seq for a in landed] == list(range(held[0].seq, held[0].seq + 4))
        # The ledger goes on from there: the next batch is built on what was committed.
        after = ledger.append("audit", actor="a", subject="after", body={})
        assert after.seq == good_c[0].seq + 1
        entries = assert_one_chain(ledger)
    for appended in [*landed, after]:
        assert entries[appended.seq] == appended.data
    assert "poison" not in [parse_entry(e).kind for e in entries]


def test_close_while_asyncio_appenders_are_in_flight(engine: Engine, signer: NoteSigner) -> None:
    ledger = open_ledger(engine, signer)
    landed: list[Appended] = []
    refused = 0
    started = threading.Event()

    async def appender(a: int) -> None:
        nonlocal refused
        for i in range(10_000):
            try:
                done = await ledger.append_many_async([record(f"{a}-{i}")])
            except StorageError:
                refused += 1
                return
            landed.extend(done)
            if len(landed) >= 64:
                started.set()

    async def scenario() -> None:
        await asyncio.wait_for(asyncio.gather(*(appender(a) for a in range(32))), 60)

    def close_once_started() -> None:
        started.wait(60)
        ledger.close()

    closer = threading.Thread(target=close_once_started)
    closer.start()
    asyncio.run(scenario())  # every appender saw the close: none hangs
    closer.join()
    assert refused == 32
    with open_ledger(engine, signer) as reopened:
        entries = assert_one_chain(reopened)
        proposals = [e for e in entries if parse_entry(e).kind == "proposal"]
    assert len(proposals) == len(landed)
    for appended in landed:
        assert entries[appended.seq] == appended.data


def test_entries_committed_together_share_their_time(engine: Engine, signer: NoteSigner) -> None:
    # Group commit, seen from the log: one transaction's entries are built at one time.
    with open_ledger(engine, signer) as ledger:
        results = _append_from_threads(ledger, 32, 10)
        entries = assert_one_chain(ledger)
    assert len(results) == 32 * 10
    times = {parse_entry(entries[a.seq]).time for a in results}
    assert len(times) < len(results)


def _append_from_threads(
    ledger: Ledger, threads: int, each: int, pause: float = 0.0
) -> list[Appended]:
    """``each`` appends from each of ``threads`` threads started at once, ``pause`` seconds
    apart; what they got back."""
    start = threading.Barrier(threads)
    results: list[Appended] = []

    def work(t: int) -> None:
        start.wait()
        for i in range(each):
            results.append(ledger.append("audit", actor="a", subject=f"{t}-{i}", body={}))
            time.sleep(pause)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return results


def test_hooks_run_in_the_transaction_that_writes_the_entries(
    engine: Engine, signer: NoteSigner
) -> None:
    # Batches with hooks and batches without them alternate on the writer's one connection.
    seen: list[tuple[int, int]] = []
    marks = sa.Table("marks", sa.MetaData(), sa.Column("seq", sa.Integer, primary_key=True))
    marks.create(engine)

    def look(conn: Connection, appended: list[Appended]) -> None:
        # This batch's entries are visible here, uncommitted: the same transaction.
        count = conn.execute(
            sa.select(sa.func.count()).where(ENTRIES.c.seq.in_([a.seq for a in appended]))
        ).scalar_one()
        seen.append((appended[0].seq, count))

    with open_ledger(engine, signer, checkpoint_every=7) as ledger:
        plain, hooked = [], []
        for i in range(12):
            plain.append(ledger.append("audit", actor="a", subject=f"p{i}", body={}).seq)
            got = ledger.append_many(
                [record(f"h{i}"), record(f"h{i}-2")],
                in_transaction=look,
                rows=lambda appended: [(marks, {"seq": appended[0].seq})],
            )
            hooked.append(got[0].seq)
        assert_one_chain(ledger)
        with engine.connect() as conn:
            assert sorted(conn.execute(sa.select(marks.c.seq)).scalars()) == hooked
    assert seen == [(seq, 2) for seq in hooked]
    assert len(set(plain) | set(hooked)) == 24


def test_a_small_max_batch_splits_what_callers_queue(engine: Engine, signer: NoteSigner) -> None:
    async def scenario(ledger: Ledger) -> list[list[Appended]]:
        return list(
            await asyncio.gather(
                *(ledger.append_many_async([record(f"a{i}"), record(f"b{i}")]) for i in range(40))
            )
        )

    with open_ledger(engine, signer, max_batch=3) as ledger:
        results = asyncio.run(scenario(ledger))
        entries = assert_one_chain(ledger)
    assert len({a.seq for pair in results for a in pair}) == 80
    for i, (first, second) in enumerate(results):
        assert second.seq == first.seq + 1
        assert entries[first.seq] == first.data
        assert parse_entry(entries[second.seq]).subject == f"b{i}"


def test_appends_built_on_a_batch_that_then_fails(engine: Engine, signer: NoteSigner) -> None:
    gate, inside = threading.Event(), threading.Event()

    class Refused(Exception):
        pass

    def hold_then_refuse(conn: Connection, appended: list[Appended]) -> None:
        inside.set()
        assert gate.wait(30)
        raise Refused("the caller changed its mind")

    async def scenario(ledger: Ledger) -> tuple[Any, list[Any]]:
        doomed = asyncio.ensure_future(
            ledger.append_many_async([record("doomed")], in_transaction=hold_then_refuse)
        )
        assert await asyncio.to_thread(inside.wait, 30)
        # Built on top of the doomed batch, which never commits.
        tasks = [
            asyncio.ensure_future(ledger.append_many_async([record(f"n{i}")])) for i in range(5)
        ]
        for _ in range(3):
            await asyncio.sleep(0)
        gate.set()
        outcome = await asyncio.gather(doomed, return_exceptions=True)
        return outcome[0], list(await asyncio.gather(*tasks))

    with open_ledger(engine, signer) as ledger:
        before = ledger.append("audit", actor="a", subject="first", body={})
        doomed, rest = asyncio.run(scenario(ledger))
        assert isinstance(doomed, Refused)
        entries = assert_one_chain(ledger)
    assert [a[0].seq for a in rest] == list(range(before.seq + 1, before.seq + 6))
    for appended in rest:
        assert entries[appended[0].seq] == appended[0].data
    assert "doomed" not in [parse_entry(e).subject for e in entries]


# -- keys another process rotated to, halting, cosignatures ---------------------------------


def test_a_process_takes_up_the_key_another_rotated_to_through_its_keyring(
    engine: Engine, signer: NoteSigner, tmp_path: Path
) -> None:
    new = new_signer()
    keyring = {new.vkey: new}
    with (
        open_ledger(engine, signer, checkpoint_every=3, keyring=keyring.get) as taking,
        open_ledger(engine, signer, checkpoint_every=3) as stuck,
        open_ledger(engine, signer, checkpoint_every=3) as rotating,
    ):
        rotating.rotate_key(new)
        for number in range(6):  # each signs checkpoints by count, after the rotation
            taking.append("proposal", actor="a", subject=f"s{number}", body={})
        assert taking.signer is new
        # Without a keyring, a process left with the old key fails where it must sign.
        with pytest.raises(SignatureError, match="current key"):
            stuck.append_many([record(f"t{number}") for number in range(6)])
        result = export_and_verify(taking, tmp_path / "export.jsonl", [verifier_of(signer)])
    assert result.final_key == new.vkey


def test_a_halted_ledger_writes_nothing_and_says_why(engine: Engine, signer: NoteSigner) -> None:
    halted = Ledger(engine, origin=ORIGIN, signer=signer, checkpoint_interval=None)
    halted.halt("the kept checkpoint says otherwise")
    with halted.open():
        assert halted.size() == 0  # not even the key entry of an empty log
        assert not halted.writing
        with pytest.raises(StorageError, match="the kept checkpoint says otherwise"):
            halted.append("proposal", actor="a", subject="s", body={})
    with open_ledger(engine, signer) as running:
        running.append("proposal", actor="a", subject="s", body={})
        running.halt("stop now")
        with pytest.raises(StorageError, match="stop now"):
            running.append("proposal", actor="a", subject="s", body={})
        assert running.size() == 2


def test_cosignatures_of_trusted_witnesses_are_kept_with_their_checkpoint(
    engine: Engine, signer: NoteSigner
) -> None:
    witnesses = [Cosigner(f"w{n}.example", Ed25519PrivateKey.generate()) for n in range(4)]
    verifiers = [CosignatureVerifier.from_vkey(w.vkey) for w in witnesses]
    with open_ledger(engine, signer) as ledger:
        ledger.append("proposal", actor="a", subject="s", body={})
        checkpoint = ledger.checkpoint()
        text = parse_note(checkpoint.note).text
        # At once, from threads: each compare-and-set keeps the lines already there.
        threads = [
            threading.Thread(
                target=ledger.add_cosignature,
                args=(checkpoint.size, w.cosign(text, 7), verifiers),
            )
            for w in witnesses
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        stranger = Cosigner("stranger.example", Ed25519PrivateKey.generate())
        with pytest.raises(SignatureError, match="not a known witness"):
            ledger.add_cosignature(checkpoint.size, stranger.cosign(text, 7), verifiers)
        with pytest.raises(KeyError):
            ledger.add_cosignature(checkpoint.size + 1, witnesses[0].cosign(text, 7), verifiers)
        # A later cosignature by one witness replaces its earlier one.
        ledger.add_cosignature(checkpoint.size, witnesses[0].cosign(text, 9), verifiers)
        stored = ledger.checkpoint_at(checkpoint.size)
        assert stored is not None
        found, _ = verify_cosignatures(stored.note, verifiers)
        assert sorted((c.witness.name, c.timestamp) for c in found) == [
            ("w0.example", 9),
            ("w1.example", 7),
            ("w2.example", 7),
            ("w3.example", 7),
        ]
        # The checkpoint entry keeps the note as the log signed it.
        assert parse_entry(ledger.entries_at([stored.seq])[0]).body["note"] == checkpoint.note
        assert open_checkpoint(stored.note, [verifier_of(signer)])[0].size == checkpoint.size
