"""Tokens are made and revoked from another process (the CLI) while a gateway writes."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from gateway.db.tables import create_gateway_tables
from gateway.identity import TokenBook, authenticate
from ledger.database import create_engine


def test_a_token_is_made_while_another_connection_is_writing(tmp_path: Path) -> None:
    path = tmp_path / "mandate.db"
    engine = create_engine(f"sqlite:///{path}")
    create_gateway_tables(engine)
    book = TokenBook(engine)
    book.create(name="warm-up", role="auditor")  # the file and its WAL exist

    # Another writer (the gateway's ledger or dispatcher) holds the write lock, then commits.
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    other.execute("CREATE TABLE elsewhere (x)")
    committed = threading.Event()

    def commit_soon() -> None:
        time.sleep(0.5)
        other.execute("COMMIT")
        committed.set()

    threading.Thread(target=commit_soon).start()
    try:
        token, identity = book.create(name="made-meanwhile", role="booking-agent")
    finally:
        committed.wait(10)
        other.close()
    assert authenticate(book, f"Bearer {token}") == identity
    engine.dispose()
