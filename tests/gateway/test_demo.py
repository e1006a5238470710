"""`mandate demo` against a gateway it starts itself: it revokes every token it made, and ends by
saying what it left in the ledger and in the approvers' inbox."""

from __future__ import annotations

import re
from pathlib import Path

import sqlalchemy as sa
from typer.testing import CliRunner

from gateway.cli.main import app
from gateway.db.tables import APPROVALS
from gateway.identity import TokenBook
from gateway.server.serving import free_port
from ledger.database import create_engine
from tests.gateway.support import POLICIES


def test_the_demo_revokes_its_tokens_and_says_what_it_left(tmp_path: Path) -> None:
    data = tmp_path / "data"
    # A port nothing answers on: the demo starts its own gateway, never someone else's.
    env = {
        "MANDATE_DATA_DIR": str(data),
        "MANDATE_POLICIES": str(POLICIES),
        "MANDATE_PORT": str(free_port()),
        "COLUMNS": "200",
    }
    done = CliRunner().invoke(app, ["demo", "--actions", "40"], env=env)
    assert done.exit_code == 0, done.output

    engine = create_engine(f"sqlite:///{data / 'mandate.db'}")
    try:
        tokens = TokenBook(engine).listing()
        with engine.connect() as conn:
            pending = conn.execute(
                sa.select(sa.func.count()).where(APPROVALS.c.status == "pending")
            ).scalar_one()
    finally:
        engine.dispose()
    assert {t.role for t in tokens} == {
        "booking-agent",
        "payments-agent",
        "claims-agent",
        "auditor",
    }
    assert all(t.revoked_at is not None for t in tokens)
    assert f"revoked the demo's 4 tokens ({', '.join(t.name for t in tokens)})" in done.output

    ledger = re.search(r"Left in the ledger: (\d+) entries in all", done.output)
    assert ledger, done.output
    assert int(ledger[1]) > 80  # 40 proposals and their decisions at least
    inbox = re.search(r"Left in the inbox: (\d+) held actions? of this run", done.output)
    assert inbox, done.output
    assert int(inbox[1]) == pending > 0
    assert "the inbox at /ui/)" in " ".join(done.output.split())  # a page that exists
