"""Several processes appending to one ledger at once: one sequence, one chain, nothing lost.

Four processes (``spawn``: nothing shared but the database and the key file) each open their own
engine and ``Ledger`` at the same moment on an empty database, then append 500 entries from a
few threads. Afterwards the log must hold every one of the 2,000 entries exactly once, in one
contiguous, hash-chained sequence that the offline verifier accepts.
"""

from __future__ import annotations

import hashlib
import itertools
import multiprocessing
import sqlite3
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from ledger.database import AppendTurns, create_engine
from ledger.entry import GENESIS_PREV, parse_entry
from ledger.export import write_export
from ledger.keys import generate_signing_key, load_signing_key
from ledger.note import NoteVerifier
from ledger.store import Ledger
from ledger.verify import verify_export
from tests.conftest import Database

ORIGIN = "test.mandate.example/ledger"
PROCESSES = 4
APPENDS = 500
THREADS = 20
CHECKPOINT_EVERY = 150


def append_in_a_process(
    url: str, schema: str | None, key_path: str, worker: int, start: Any
) -> None:
    """One gateway-like process: its own engine, ledger and writer; 500 appends from 20 threads."""
    engine = create_engine(url, schema=schema)
    signer = load_signing_key(Path(key_path), ORIGIN)
    start.wait()  # every process opens the ledger (and finds it empty) at the same time
    try:
        with Ledger(
            engine,
            origin=ORIGIN,
            signer=signer,
            checkpoint_every=CHECKPOINT_EVERY,
            checkpoint_interval=None,
        ).open() as ledger:

            def appender(thread: int) -> None:
                for i in range(thread, APPENDS, THREADS):
                    ledger.append(
                        "decision",
                        actor=f"process-{worker}",
                        subject=f"p{worker}-{i}",
                        body={"worker": worker, "i": i},
                    )

            threads = [threading.Thread(target=appender, args=(t,)) for t in range(THREADS)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    finally:
        engine.dispose()


def run_processes(database: Database, key_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(PROCESSES)
    processes = [
        context.Process(
            target=append_in_a_process,
            args=(database.url, database.schema, str(key_path), worker, start),
            name=f"appender-{worker}",
        )
        for worker in range(PROCESSES)
    ]
    for p in processes:
        p.start()
    for p in processes:
        p.join(timeout=240)
    codes = {p.name: p.exitcode for p in processes}
    assert all(code == 0 for code in codes.values()), codes


def check_the_log(database: Database, key_path: Path, tmp_path: Path) -> None:
    signer = load_signing_key(key_path, ORIGIN)
    engine = create_engine(database.url, schema=database.schema)
    try:
        with Ledger(
            engine, origin=ORIGIN, signer=signer, checkpoint_interval=None
        ).open() as ledger:
            entries = list(ledger.entries())
            assert len(entries) == ledger.size()

            prev = GENESIS_PREV
            kinds: Counter[str] = Counter()
            subjects: Counter[str] = Counter()
            for seq, data in enumerate(entries):
                entry = parse_entry(data)
                assert entry.seq == seq
                assert entry.prev == prev, f"fork or gap at seq {seq}"
                prev = hashlib.sha256(b"\x00" + data).hexdigest()
                kinds[entry.kind] += 1
                if entry.kind == "decision":
                    subjects[entry.subject] += 1

            # 2,000 appends, one genesis key entry, and the checkpoints: nothing else, no gap.
            assert kinds["decision"] == PROCESSES * APPENDS
            assert kinds["key"] == 1
            assert parse_entry(entries[0]).kind == "key"
            assert len(entries) == PROCESSES * APPENDS + 1 + kinds["checkpoint"]
            assert kinds["checkpoint"] >= (PROCESSES * APPENDS) // (2 * CHECKPOINT_EVERY)
            # Each writer knew of the others' checkpoints (caught up across them): the first
            # covers at least CHECKPOINT_EVERY entries, and each next one that many more after
            # the one before it; a writer that missed one would have signed too early.
            signed = [
                seq for seq, data in enumerate(entries) if parse_entry(data).kind == "checkpoint"
            ]
            assert signed[0] >= CHECKPOINT_EVERY
            assert all(b - a > CHECKPOINT_EVERY for a, b in itertools.pairwise(signed))
            expected = {f"p{w}-{i}" for w in range(PROCESSES) for i in range(APPENDS)}
            assert set(subjects) == expected
            assert set(subjects.values()) == {1}

            export = tmp_path / "export.jsonl"
            with export.open("wb") as out:
                closing = write_export(ledger, out)
    finally:
        engine.dispose()
    result = verify_export(export, [NoteVerifier.from_vkey(signer.vkey)])
    # The export holds every entry up to its closing checkpoint: all of them, but for the last
    # when the log ends with a checkpoint's own entry (that checkpoint closes the export).
    ends_signed = parse_entry(entries[-1]).kind == "checkpoint"
    assert closing.size == len(entries) - (1 if ends_signed else 0)
    assert result.size == closing.size
    assert result.root == closing.root_hash


@pytest.mark.slow
def test_four_processes_append_to_one_sqlite_file(
    sqlite_database: Database, tmp_path: Path
) -> None:
    key_path = tmp_path / "keys" / "ledger-signing-key.pem"
    generate_signing_key(key_path, ORIGIN)
    run_processes(sqlite_database, key_path)
    check_the_log(sqlite_database, key_path, tmp_path)


@pytest.mark.slow
@pytest.mark.postgres
def test_four_processes_append_to_one_postgresql_database(
    pg_database: Database, tmp_path: Path
) -> None:
    key_path = tmp_path / "keys" / "ledger-signing-key.pem"
    generate_signing_key(key_path, ORIGIN)
    run_processes(pg_database, key_path)
    check_the_log(pg_database, key_path, tmp_path)


def test_starting_while_another_process_writes_a_new_sqlite_file(tmp_path: Path) -> None:
    # A second process that starts while the first is still writing a new file (not yet in WAL
    # mode) must wait for it, not fail: SQLite will not wait on its own for the switch to WAL.
    path = tmp_path / "mandate.db"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("CREATE TABLE first_process_was_here (x)")
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO first_process_was_here VALUES (1)")
    released = threading.Timer(0.5, lambda: other.execute("COMMIT"))
    released.start()
    engine = create_engine(f"sqlite:///{path}")
    try:
        with Ledger(engine, origin=ORIGIN, signer=None).open() as ledger:
            assert ledger.size() == 0
        with engine.connect() as conn:
            mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
        assert mode == "wal"
    finally:
        released.join()
        other.close()
        engine.dispose()


def test_ledgers_opening_at_once_on_an_empty_database(database: Database, tmp_path: Path) -> None:
    # Several gateway processes started together on a new database: each creates the tables if
    # they are missing and the log's genesis key entry if the log is empty; exactly one does.
    key_path = tmp_path / "ledger-signing-key.pem"
    signer = generate_signing_key(key_path, ORIGIN)
    count = 6
    engines = [create_engine(database.url, schema=database.schema) for _ in range(count)]
    start = threading.Barrier(count)
    errors: list[BaseException] = []
    appended: list[int] = []

    def open_and_append(i: int) -> None:
        try:
            start.wait()
            with Ledger(
                engines[i], origin=ORIGIN, signer=signer, checkpoint_interval=None
            ).open() as ledger:
                appended.append(ledger.append("decision", actor="a", subject=f"s{i}", body={}).seq)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_and_append, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        assert sorted(appended) == list(range(1, count + 1))
        with Ledger(engines[0], origin=ORIGIN, signer=None).open() as ledger:
            entries = [parse_entry(data) for data in ledger.entries()]
        assert [e.kind for e in entries] == ["key"] + ["decision"] * count
        assert [e.seq for e in entries] == list(range(count + 1))
    finally:
        for engine in engines:
            engine.dispose()


# -- turns: the writers of several processes on one SQLite file -------------------------------


def test_a_sqlite_writer_waits_its_turn_then_appends(tmp_path: Path) -> None:
    """Writers on one SQLite file take turns through ``<db>.append-lock``: while another
    process's writer holds its turn, an append waits, then goes in once that turn is over."""
    db = tmp_path / "ledger.db"
    engine = create_engine(f"sqlite:///{db}")
    signer = generate_signing_key(tmp_path / "key.pem", ORIGIN)
    # Another writer's turns, as another process on the same file has them.
    other = AppendTurns(create_engine(f"sqlite:///{db}"))
    with Ledger(engine, origin=ORIGIN, signer=signer, checkpoint_interval=None) as ledger:
        done = threading.Event()

        def append() -> None:
            ledger.append("proposal", actor="agent", subject="case-1", body={"n": 1})
            done.set()

        with other.turn():
            appending = threading.Thread(target=append)
            appending.start()
            assert not done.wait(0.5), "an append went in during another writer's turn"
            assert ledger.size() == 1  # the key entry alone
        assert done.wait(30), "the append did not go in once the other writer's turn was over"
        appending.join()
        assert ledger.size() == 2
    other.close()
    assert (tmp_path / "ledger.db.append-lock").exists()


def test_writers_go_without_turns_where_the_lock_file_cannot_be_made(tmp_path: Path) -> None:
    """Turns only order the writers (SQLite's lock guards the data): a lock file that cannot be
    opened (here a directory stands in its place) costs the order, never an append."""
    db = tmp_path / "ledger.db"
    (tmp_path / "ledger.db.append-lock").mkdir()
    engine = create_engine(f"sqlite:///{db}")
    signer = generate_signing_key(tmp_path / "key.pem", ORIGIN)
    with Ledger(engine, origin=ORIGIN, signer=signer, checkpoint_interval=None) as ledger:
        ledger.append("proposal", actor="agent", subject="case-1", body={"n": 1})
        assert ledger.size() == 2
