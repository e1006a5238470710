"""Sealed personal data and its erasure, on a real SQLite file and a real PostgreSQL schema.

What a data protection officer and a regulator would check: while a data subject's values are
sealed the entry holds only commitments and ``reveal`` gives them back; after ``erase`` the
export still verifies, ``reveal`` says which fields were erased and by which entry, the erasure
entry names the subject only by a keyed digest, and neither the values nor the subject's id are
left anywhere: not in any table, and on SQLite not in the database file or its WAL either.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ledger.database import create_engine, sqlite_file
from ledger.entry import parse_entry
from ledger.errors import EntryError, KeyFileError, StorageError
from ledger.note import NoteSigner
from ledger.sealing import ERASED_MARK, SEALED_MARK
from ledger.store import Ledger, Record
from tests.conftest import Database
from tests.ledger.test_store import export_and_verify, new_signer, verifier_of

ORIGIN = "test.mandate.example/ledger"
SUBJECT_KEY = bytes(range(32))
CUSTOMER, EMAIL, NAME = "C-1001", "zoe.qwerty@example.org", "Zoë Qwerty"
OTHER, OTHER_EMAIL, OTHER_NAME = "C-2002", "ann.other@example.org", "Ann Other"
SEALED = frozenset({"params.customer", "params.customer_email", "params.customer_name"})


def decision(customer: str, email: str, name: str, spot: str) -> dict[str, Any]:
    return {
        "params": {
            "customer": customer,
            "customer_email": email,
            "customer_name": name,
            "spot": spot,
        },
        "verdict": "allow",
    }


@pytest.fixture
def engine(database: Database) -> Iterator[Engine]:
    engine = create_engine(database.url, schema=database.schema)
    yield engine
    engine.dispose()


@pytest.fixture
def signer() -> NoteSigner:
    return new_signer()


def open_ledger(engine: Engine, signer: NoteSigner, key: bytes | None = SUBJECT_KEY) -> Ledger:
    return Ledger(
        engine, origin=ORIGIN, signer=signer, checkpoint_interval=None, subject_key=key
    ).open()


def every_cell(engine: Engine) -> bytes:
    """Every value of every row of every table in the ledger's schema, as bytes to search."""
    cells: list[bytes] = []
    with engine.connect() as conn:
        for table in sa.inspect(conn).get_table_names():
            for row in conn.execute(sa.text(f'SELECT * FROM "{table}"')):
                for value in row:
                    if isinstance(value, (bytes, memoryview)):
                        cells.append(bytes(value))
                    elif value is not None:
                        cells.append(str(value).encode())
    return b"\n".join(cells)


def sqlite_files(engine: Engine) -> dict[str, bytes]:
    """The raw bytes of the SQLite database file and of its WAL and shared-memory files."""
    path = sqlite_file(engine)
    assert path is not None
    found = {}
    for suffix in ("", "-wal", "-shm"):
        candidate = Path(f"{path}{suffix}")
        if candidate.exists():
            found[candidate.name] = candidate.read_bytes()
    return found


def holding(blob: bytes, *values: str) -> list[str]:
    return [value for value in values if value.encode() in blob]


def test_a_data_subject_is_erased_from_every_table_and_file_and_the_export_verifies(
    engine: Engine, database: Database, signer: NoteSigner, tmp_path: Path
) -> None:
    zoe = decision(CUSTOMER, EMAIL, NAME, "B7")
    ann = decision(OTHER, OTHER_EMAIL, OTHER_NAME, "C3")
    with open_ledger(engine, signer) as ledger:
        first = ledger.append(
            "decision",
            actor="agent-7",
            subject="act-1",
            body=zoe,
            sealed=SEALED,
            data_subject=CUSTOMER,
        )
        second, other = ledger.append_many(
            [
                Record("decision", "agent-7", "act-2", zoe, SEALED, CUSTOMER),
                Record("decision", "agent-7", "act-3", ann, SEALED, OTHER),
            ]
        )
        stored = ledger.entry(first.seq).body
        assert holding(first.data, CUSTOMER, EMAIL, NAME) == []
        assert set(stored["params"]["customer"]) == {SEALED_MARK}
        assert stored["params"]["spot"] == "B7"
        assert ledger.reveal(first.seq) == zoe
        # Before the erasure the values are there to find: the searches below can see them.
        assert holding(every_cell(engine), CUSTOMER, EMAIL, NAME) == [CUSTOMER, EMAIL, NAME]

        erasure = ledger.erase(CUSTOMER, actor="dpo", reason="GDPR art. 17 request #88")
        assert erasure is not None

        # The erasure entry: the subject by its keyed digest, the fields erased, the reason.
        entry = parse_entry(erasure.data)
        assert entry.kind == "erasure"
        assert entry.subject == ledger.subject_digest(CUSTOMER)
        assert entry.body == {
            "erased": [
                {"seq": seq, "path": path}
                for seq in (first.seq, second.seq)
                for path in sorted(SEALED)
            ],
            "reason": "GDPR art. 17 request #88",
        }
        assert holding(erasure.data, CUSTOMER, EMAIL, NAME) == []

        # reveal: erased fields say so, and by which entry; another subject's are untouched.
        for seq in (first.seq, second.seq):
            revealed = ledger.reveal(seq)
            for field in ("customer", "customer_email", "customer_name"):
                mark = ledger.entry(seq).body["params"][field]
                assert revealed["params"][field] == {**mark, ERASED_MARK: erasure.seq}
            assert revealed["params"]["spot"] == "B7"
        assert ledger.reveal(other.seq) == ann
        assert ledger.erase(CUSTOMER, actor="dpo", reason="again") is None

        # Nothing left: no table holds the values or the id, while the ledger is still open
        # (on SQLite with its WAL in use), and the other subject's are still there.
        cells = every_cell(engine)
        assert holding(cells, CUSTOMER, EMAIL, NAME) == []
        assert holding(cells, OTHER, OTHER_EMAIL, OTHER_NAME) == [OTHER, OTHER_EMAIL, OTHER_NAME]
        if database.backend == "sqlite":
            files = sqlite_files(engine)
            assert "mandate.db-wal" in files
            for name, data in files.items():
                assert holding(data, CUSTOMER, EMAIL, NAME) == [], name
            assert holding(b"".join(files.values()), OTHER_EMAIL) == [OTHER_EMAIL]

        result = export_and_verify(ledger, tmp_path / "export.jsonl", [verifier_of(signer)])
    assert result.size > erasure.seq
    exported = (tmp_path / "export.jsonl").read_bytes()
    assert holding(exported, CUSTOMER, EMAIL, NAME, OTHER_EMAIL) == []
    if database.backend == "sqlite":
        engine.dispose()
        for name, data in sqlite_files(engine).items():
            assert holding(data, CUSTOMER, EMAIL, NAME) == [], name


def test_the_subject_digest_is_keyed_so_a_guessable_id_cannot_be_tried(
    engine: Engine, signer: NoteSigner
) -> None:
    with open_ledger(engine, signer) as ledger:
        digest = ledger.subject_digest(CUSTOMER)
    assert len(bytes.fromhex(digest)) == 32
    # Not the plain hash anyone could compute for every "C-0000" .. "C-9999".
    assert digest != hashlib.sha256(CUSTOMER.encode()).hexdigest()
    other_key = Ledger(engine, origin=ORIGIN, subject_key=bytes(32))
    assert other_key.subject_digest(CUSTOMER) != digest
    assert other_key.subject_digest(OTHER) != other_key.subject_digest(CUSTOMER)


def test_a_ledger_given_another_subject_key_refuses_to_open(
    engine: Engine, signer: NoteSigner
) -> None:
    with open_ledger(engine, signer) as ledger:
        ledger.append(
            "decision",
            actor="a",
            subject="act-1",
            body=decision(CUSTOMER, EMAIL, NAME, "B7"),
            sealed=SEALED,
            data_subject=CUSTOMER,
        )
    # Its erasures would find none of the values sealed under the first key.
    with pytest.raises(KeyFileError, match="subject key"):
        open_ledger(engine, signer, key=bytes(32))
    with open_ledger(engine, signer) as again:
        assert again.erase(CUSTOMER, actor="dpo", reason="art. 17") is not None


@pytest.mark.parametrize(
    ("record", "field"),
    [
        (Record("decision", "a", "act", {"email": EMAIL}, sealed=("email",)), "data_subject"),
        (
            Record("decision", "a", "act", decision(CUSTOMER, EMAIL, NAME, "B7"),
                   sealed=("params.customer_email",), data_subject=CUSTOMER),
            "data_subject",
        ),
        (Record("decision", "a", CUSTOMER, {"e": EMAIL}, ("e",), CUSTOMER), "data_subject"),
        (Record("decision", "a", "act", {"e": EMAIL}, ("missing",), CUSTOMER), "body.missing"),
    ],
    ids=["sealed-without-subject", "subject-left-unsealed", "subject-as-entry-subject",
         "no-such-field"],
)  # fmt: skip
def test_a_record_that_would_leave_personal_data_unerasable_is_refused(
    engine: Engine, signer: NoteSigner, record: Record, field: str
) -> None:
    with open_ledger(engine, signer) as ledger:
        before = ledger.size()
        with pytest.raises(EntryError) as refused:
            ledger.append_many([record])
        assert refused.value.path == field
        assert CUSTOMER not in str(refused.value)  # the message names fields, not values
        assert ledger.size() == before


def test_an_erasure_reason_that_names_the_subject_is_refused(
    engine: Engine, signer: NoteSigner
) -> None:
    with open_ledger(engine, signer) as ledger:
        ledger.append(
            "decision",
            actor="a",
            subject="act-1",
            body={"e": EMAIL},
            sealed=("e",),
            data_subject=CUSTOMER,
        )
        before = ledger.size()
        with pytest.raises(EntryError) as refused:
            ledger.erase(CUSTOMER, actor="dpo", reason=f"request from {CUSTOMER}")
        assert refused.value.path == "reason"
        assert ledger.size() == before
        assert ledger.reveal(before - 1) == {"e": EMAIL}


def test_without_a_subject_key_nothing_is_sealed_or_erased(
    engine: Engine, signer: NoteSigner
) -> None:
    with open_ledger(engine, signer, key=None) as ledger:
        before = ledger.size()
        with pytest.raises(StorageError, match="subject key"):
            ledger.append(
                "decision", actor="a", subject="s", body={"e": EMAIL}, sealed=("e",),
                data_subject=CUSTOMER,
            )  # fmt: skip
        with pytest.raises(StorageError, match="subject key"):
            ledger.erase(CUSTOMER, actor="dpo", reason="art. 17")
        assert ledger.size() == before


def test_sealed_fields_are_commitments_revealed_until_erased(
    engine: Engine, signer: NoteSigner, tmp_path: Path
) -> None:
    email, phone = "zoe@example.org", "+44 20 7946 0000"
    body: dict[str, Any] = {
        "customer": {"email": email, "tier": "gold", "phone": phone},
        "amount": "10.00",
    }
    with open_ledger(engine, signer) as ledger:
        sealed = ledger.append(
            "proposal",
            actor="agent",
            subject="act-42",
            body=body,
            sealed=["customer.email", "customer.phone"],
            data_subject="customer-42",
        )
        other = ledger.append(
            "proposal",
            actor="agent",
            subject="act-7",
            body={"email": "ann@example.org"},
            sealed=["email"],
            data_subject="customer-7",
        )
        # The caller's body is left as it was.
        assert body["customer"]["email"] == email

        stored = ledger.entry(sealed.seq).body
        assert email.encode() not in sealed.data
        assert phone.encode() not in sealed.data
        mark = stored["customer"]["email"]
        assert set(mark) == {SEALED_MARK}
        assert len(bytes.fromhex(mark[SEALED_MARK])) == 32
        assert stored["customer"]["phone"][SEALED_MARK] != mark[SEALED_MARK]
        assert stored["customer"]["tier"] == "gold"
        assert ledger.reveal(sealed.seq) == body

        erasure = ledger.erase("customer-42", actor="dpo", reason="GDPR art. 17 request")
        assert erasure is not None
        # The values and salts are gone from the database; the entry is untouched.
        with engine.connect() as conn:
            left = conn.execute(
                sa.text("SELECT salt, value, erased_by FROM ledger_sealed WHERE seq = :seq"),
                {"seq": sealed.seq},
            ).all()
        assert len(left) == 2
        assert all(row == (None, None, erasure.seq) for row in left)
        assert ledger.entry(sealed.seq).data == sealed.data
        erased = {**mark, ERASED_MARK: erasure.seq}
        assert ledger.reveal(sealed.seq)["customer"]["email"] == erased
        # Another subject's sealed value is still there.
        assert ledger.reveal(other.seq) == {"email": "ann@example.org"}

        result = export_and_verify(ledger, tmp_path / "export.jsonl", [verifier_of(signer)])
    assert result.size > erasure.seq
    exported = (tmp_path / "export.jsonl").read_bytes()
    assert email.encode() not in exported
    assert phone.encode() not in exported


def test_values_sealed_while_an_erasure_runs_are_erased_by_it_or_come_after_it(
    engine: Engine, signer: NoteSigner
) -> None:
    stop = threading.Event()
    appended: list[int] = []

    def keep_sealing(ledger: Ledger) -> None:
        while not stop.is_set():
            done = ledger.append(
                "decision",
                actor="agent-7",
                subject="act",
                body={"email": EMAIL},
                sealed=("email",),
                data_subject=CUSTOMER,
            )
            appended.append(done.seq)

    with open_ledger(engine, signer) as ledger:
        # Several sealers, so that their appends and the erasure meet in the writer's batches.
        sealers = [threading.Thread(target=keep_sealing, args=(ledger,)) for _ in range(4)]
        for sealer in sealers:
            sealer.start()
        try:
            while len(appended) < 20:
                time.sleep(0.001)
            erasure = ledger.erase(CUSTOMER, actor="dpo", reason="art. 17")
            while len(appended) < 40:
                time.sleep(0.001)
        finally:
            stop.set()
            for sealer in sealers:
                sealer.join()
        assert erasure is not None
        erased = {item["seq"] for item in parse_entry(erasure.data).body["erased"]}
        before = {seq for seq in appended if seq < erasure.seq}
        assert erased == before
        for seq in appended:
            revealed = ledger.reveal(seq)["email"]
            if seq < erasure.seq:
                assert revealed[ERASED_MARK] == erasure.seq
            else:
                assert revealed == EMAIL
