"""The gateway is its own first witness (``gateway.server.custody``): it keeps the last checkpoint
of its ledger in ``<data dir>/last-checkpoint`` and refuses to serve a database whose ledger does
not extend it: one dropped and made anew, a restored backup, another deployment's. Refused, it
writes nothing into that database, ``/readyz`` is a 503 naming the kept checkpoint, proposals
are 503s, and one log line says why. Real gateways on loopback, real SQLite and PostgreSQL."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa

from gateway.server.custody import FILE_NAME
from ledger.checkpoint import parse_checkpoint_body
from ledger.note import parse_note
from tests.conftest import Database
from tests.gateway.support import Gateway, Serve, assert_problem, good_booking


@pytest.fixture(autouse=True)
def _checkpoint_often(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MANDATE_CHECKPOINT_EVERY", "4")


def _propose(gateway: Gateway, count: int) -> None:
    client = gateway.as_role("booking-agent")
    for _ in range(count):
        assert client.post("/v1/actions", json=good_booking()).status_code == 200


def _kept_size(data_dir: Path) -> int:
    note = (data_dir / FILE_NAME).read_text()
    return parse_checkpoint_body(parse_note(note).text).size


def _assert_refused(gateway: Gateway, caplog: pytest.LogCaptureFixture, why: str) -> None:
    readyz = gateway.as_role("auditor").get("/readyz")
    assert readyz.status_code == 503
    history = readyz.json()["checks"]["history"]
    assert FILE_NAME in history
    assert why in history
    problem = assert_problem(
        gateway.as_role("booking-agent").post("/v1/actions", json=good_booking()), 503
    )
    assert FILE_NAME in problem["detail"]
    said = [r for r in caplog.records if r.name == "mandate.custody" and r.levelno >= logging.ERROR]
    assert len(said) == 1
    assert FILE_NAME in said[0].getMessage()


def _drop_and_recreate(database: Database) -> None:
    if database.schema is None:
        path = Path(database.url.removeprefix("sqlite:///"))
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        return
    admin = sa.create_engine(database.url)
    with admin.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{database.schema}" CASCADE'))
        conn.execute(sa.text(f'CREATE SCHEMA "{database.schema}"'))
    admin.dispose()


def test_a_dropped_and_recreated_database_is_refused_and_left_empty(
    database: Database, serve_gateway: Serve, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data_dir = tmp_path / "data"
    first = serve_gateway(database, data_dir=data_dir)
    _propose(first, 3)
    first.stop()
    kept = _kept_size(data_dir)
    assert kept > 1
    # The same database again: it extends what was kept, and the gateway serves.
    again = serve_gateway(database, data_dir=data_dir)
    assert again.as_role("auditor").get("/readyz").status_code == 200
    _propose(again, 1)
    again.stop()
    assert _kept_size(data_dir) >= kept

    _drop_and_recreate(database)
    with caplog.at_level(logging.ERROR, logger="mandate.custody"):
        refused = serve_gateway(database, data_dir=data_dir)
        _assert_refused(refused, caplog, "fewer than")
    # Nothing was written into the new database: no key entry, no policy, no proposal.
    assert refused.ledger_size() == 0


def test_a_restored_backup_is_refused(
    sqlite_database: Database,
    serve_gateway: Serve,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    data_dir = tmp_path / "data"
    path = Path(sqlite_database.url.removeprefix("sqlite:///"))
    backup = tmp_path / "backup.db"
    first = serve_gateway(sqlite_database, data_dir=data_dir)
    _propose(first, 2)
    first.stop()
    source, copy = sqlite3.connect(path), sqlite3.connect(backup)
    source.backup(copy)
    source.close()
    copy.close()
    second = serve_gateway(sqlite_database, data_dir=data_dir)
    _propose(second, 4)
    second.stop()
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    path.write_bytes(backup.read_bytes())
    with caplog.at_level(logging.ERROR, logger="mandate.custody"):
        refused = serve_gateway(sqlite_database, data_dir=data_dir)
        _assert_refused(refused, caplog, "restored backup")


def test_another_deployments_database_is_refused(
    sqlite_database: Database,
    serve_gateway: Serve,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ours = tmp_path / "ours"
    first = serve_gateway(sqlite_database, data_dir=ours)
    _propose(first, 2)
    first.stop()
    theirs = Database(f"sqlite:///{tmp_path / 'theirs.db'}")
    other = serve_gateway(theirs, data_dir=tmp_path / "theirs")
    _propose(other, 6)
    other.stop()
    with caplog.at_level(logging.ERROR, logger="mandate.custody"):
        refused = serve_gateway(theirs, data_dir=ours)
        _assert_refused(refused, caplog, "another deployment")
