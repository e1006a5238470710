"""The writer's catch-up: a tail caught up from the one it last committed matches a rebuild.

When another process appended, the writer reads the leaf hashes since its cached tail and adds
them to its frontier instead of rebuilding the tail from the database. These tests reach into
the writer to compare the two, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from ledger.database import WRITE, create_engine
from ledger.errors import SignatureError
from ledger.note import NoteSigner
from ledger.store import Ledger
from ledger.transaction import Transaction
from ledger.writer import Writer
from tests.conftest import Database
from tests.ledger.test_store import (
    ORIGIN,
    assert_one_chain,
    export_and_verify,
    new_signer,
    open_ledger,
    record,
    verifier_of,
)


@pytest.fixture
def signer() -> NoteSigner:
    return new_signer()


def writer_of(ledger: Ledger) -> Writer:
    writer = ledger._writer
    assert writer is not None
    return writer


def _caught_up_and_rebuilt(ledger: Ledger, engine: Engine) -> tuple[Any, Any]:
    """What ``ledger`` catches up to from its cached tail, and the tail rebuilt whole from the
    database (by a ledger with nothing cached), both read in one append transaction."""
    fresh = Ledger(engine, origin=ORIGIN, signer=ledger.signer)
    with engine.connect().execution_options(**{WRITE: True}) as conn:
        txn = Transaction(conn, None)
        txn.begin(writer_of(ledger)._lock_key)
        try:
            caught = writer_of(ledger)._catch_up(txn)
            size, prev = txn.tail()
            return caught, writer_of(fresh)._current_tail(txn, size, prev)
        finally:
            txn.abandon()


def _same_tail(caught: Any, rebuilt: Any) -> None:
    assert caught is not None
    assert (caught.size, caught.prev) == (rebuilt.size, rebuilt.prev)
    assert caught.frontier.size == rebuilt.frontier.size == rebuilt.size
    assert caught.frontier.hashes == rebuilt.frontier.hashes
    assert caught.frontier.root() == rebuilt.frontier.root()
    assert caught.checkpoint_size == rebuilt.checkpoint_size
    assert caught.vkey == rebuilt.vkey


def test_catching_up_across_another_ledgers_checkpoint_and_rotation_matches_a_rebuild(
    database: Database, signer: NoteSigner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = create_engine(database.url, schema=database.schema)
    second = create_engine(database.url, schema=database.schema)
    successor = new_signer()
    try:
        with open_ledger(first, signer) as a, open_ledger(second, signer) as b:
            a.append("audit", actor="x", subject="a-0", body={})
            cached = writer_of(a)._tail
            assert cached is not None
            caught, rebuilt = _caught_up_and_rebuilt(a, first)
            assert caught is cached  # nothing followed it: the cached tail itself
            _same_tail(caught, rebuilt)
            # a's cached tail stays where it is while b appends, checkpoints and rotates.
            b.append_many([record(f"b-{i}") for i in range(5)])
            caught, rebuilt = _caught_up_and_rebuilt(a, first)
            _same_tail(caught, rebuilt)
            assert caught.checkpoint_size == cached.checkpoint_size
            b.checkpoint()
            caught, rebuilt = _caught_up_and_rebuilt(a, first)
            _same_tail(caught, rebuilt)
            assert caught.checkpoint_size == b.size() - 1 > cached.checkpoint_size
            b.rotate_key(successor)
            b.append_many([record(f"b-late-{i}") for i in range(3)])
            caught, rebuilt = _caught_up_and_rebuilt(a, first)
            _same_tail(caught, rebuilt)
            assert caught.vkey == successor.vkey != cached.vkey
            # Too much to catch up on, or a cached tail the log does not continue: rebuilt.
            monkeypatch.setattr("ledger.writer._CATCH_UP_MAX", 3)
            assert _caught_up_and_rebuilt(a, first)[0] is None
            monkeypatch.undo()
            writer_of(a)._tail = dataclasses.replace(cached, prev=bytes(32))
            assert _caught_up_and_rebuilt(a, first)[0] is None
            writer_of(a)._tail = cached
            # a appends on what it caught up to: one chain, its checkpoints signed after b's.
            late = a.append("audit", actor="x", subject="a-late", body={})
            assert late.seq == b.size() - 1
            assert writer_of(a)._tail is not None
            _same_tail(writer_of(a)._tail, _caught_up_and_rebuilt(b, second)[1])
            assert_one_chain(a)
            with pytest.raises(SignatureError):
                a.checkpoint()  # a still signs with the old key, as after a rebuild
            b.checkpoint()
            result = export_and_verify(b, tmp_path / "export.jsonl", [verifier_of(signer)])
            assert result.size == b.size() - 1
    finally:
        first.dispose()
        second.dispose()
