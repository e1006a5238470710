"""Tokens are made and revoked from another process (the CLI) while a gateway writes, and
listed without their secrets."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

from typer.testing import CliRunner

from gateway.cli.main import app
from gateway.db.tables import create_gateway_tables
from gateway.identity import TokenBook, authenticate
from ledger.database import create_engine
from tests.gateway.support import POLICIES


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


def test_mandate_token_list_shows_what_each_token_is_never_its_secret(tmp_path: Path) -> None:
    env = {"MANDATE_DATA_DIR": str(tmp_path / "data"), "MANDATE_POLICIES": str(POLICIES)}
    runner = CliRunner()
    nothing = runner.invoke(app, ["token", "list"], env=env)
    assert nothing.exit_code == 2  # a command that reads makes no data dir
    assert not (tmp_path / "data").exists()

    made = runner.invoke(
        app,
        ["token", "create", "--name", "bot", "--role", "booking-agent", "--workflow", "parking"],
        env=env,
    )
    assert made.exit_code == 0, made.output
    secret = made.stdout.strip()
    for args in (["--name", "alice", "--role", "approver", "--owner", "ops-team"],
                 ["--name", "old", "--role", "auditor"]):  # fmt: skip
        assert runner.invoke(app, ["token", "create", *args], env=env).exit_code == 0
    assert runner.invoke(app, ["token", "revoke", "old"], env=env).exit_code == 0

    listed = runner.invoke(app, ["token", "list"], env=env)
    assert listed.exit_code == 0, listed.output
    header, *lines = listed.stdout.splitlines()
    assert header.split() == ["NAME", "ROLE", "WORKFLOW", "OWNER", "CREATED", "REVOKED"]
    rows = {line.split()[0]: line.split() for line in lines}
    assert rows["bot"][1:4] == ["booking-agent", "parking", "bot"]
    assert rows["bot"][5] == "-"
    assert rows["alice"][1:4] == ["approver", "-", "ops-team"]
    assert rows["old"][5] != "-"  # when it was revoked
    as_json = runner.invoke(app, ["token", "list", "--json"], env=env)
    assert {t["name"]: t["revoked_at"] is None for t in json.loads(as_json.stdout)} == {
        "bot": True,
        "alice": True,
        "old": False,
    }
    for output in (listed.stdout, as_json.stdout):
        assert secret not in output
        assert "mdt_" not in output
