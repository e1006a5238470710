"""Database engines: what ``ledger.database.create_engine`` sets up for the ledger."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import sqlalchemy as sa

from ledger.database import CONNECT_TIMEOUT, Timeouts, create_engine
from tests.conftest import Database


def test_a_postgresql_connect_to_a_server_that_never_answers_gives_up() -> None:
    """A server that takes the TCP connection and then says nothing (hung, or a full backlog
    behind a dropped route) must not hold whoever connects (the ledger's writer, a readiness
    check) for minutes: the attempt fails after CONNECT_TIMEOUT seconds, and the gateway fails
    closed with that reason."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes handshakes; nobody ever reads or answers
        port = silent.getsockname()[1]
        engine = create_engine(f"postgresql+psycopg://mandate@127.0.0.1:{port}/mandate")
        outcome: list[BaseException | None] = []

        def connect() -> None:
            try:
                with engine.connect():
                    outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)

        attempt = threading.Thread(target=connect, daemon=True)
        attempt.start()
        attempt.join(timeout=CONNECT_TIMEOUT + 30)
        engine.dispose()
    assert outcome, "the connection attempt was still waiting long after the connect timeout"
    assert isinstance(outcome[0], sa.exc.OperationalError)
    assert "timeout" in str(outcome[0]).lower()


def test_postgresql_statements_lock_waits_and_idle_transactions_end_at_their_bounds(
    pg_database: Database,
) -> None:
    """The server itself ends what would hold the ledger's writer, or everyone behind it: a
    statement that runs too long, a wait for a lock (another process's append lock), a session
    left in a transaction by a client that went quiet (its locks go free)."""
    timeouts = Timeouts(statement=0.5, lock=0.2, idle_in_transaction=0.5)
    engine = create_engine(pg_database.url, schema=pg_database.schema, timeouts=timeouts)
    try:
        with engine.connect() as conn:
            with pytest.raises(sa.exc.OperationalError, match="statement timeout"):
                conn.execute(sa.text("SELECT pg_sleep(5)"))
            conn.rollback()
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(1)))
            with (
                engine.connect() as other,
                pytest.raises(sa.exc.OperationalError, match="lock timeout"),
            ):
                other.execute(sa.select(sa.func.pg_advisory_xact_lock(1)))
            time.sleep(1.5)  # idle in the transaction, past its bound
            with pytest.raises(sa.exc.DBAPIError, match="idle-in-transaction timeout"):
                conn.execute(sa.text("SELECT 1"))
        with engine.connect() as other:  # the lock went with the session
            other.execute(sa.select(sa.func.pg_advisory_xact_lock(1)))
    finally:
        engine.dispose()
