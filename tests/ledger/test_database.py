"""Database engines: what ``ledger.database.create_engine`` sets up for the ledger."""

from __future__ import annotations

import socket
import threading

import sqlalchemy as sa

from ledger.database import CONNECT_TIMEOUT, create_engine


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
