"""`mandate db upgrade` and the gateway's own upgrade at start, on SQLite and on PostgreSQL.

What an operator sees: an empty database brought to the models' schema, a second run that
changes nothing, upgrades run from several processes at once that apply the revision once, a
gateway told not to migrate that refuses to start and says what to run, and databases made
before migrations (by ``create_all``) adopted with their rows, or left alone when they differ.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import pytest
import sqlalchemy as sa
from alembic import command as alembic_command
from sqlalchemy.engine import Connection, Engine
from typer.testing import CliRunner, Result

from gateway.approvals.inbox import InboxQuery, read_page
from gateway.cli.main import app
from gateway.db.connect import open_engine, signing_key
from gateway.db.migrations import (  # _config: to stop at a revision before head
    VERSION_TABLE,
    SchemaError,
    _config,
    differences,
    head,
    model_metadata,
    schema_state,
    upgrade,
)
from gateway.db.migrations.baseline import baseline_metadata
from gateway.identity import TokenBook
from gateway.server.runtime import Runtime
from gateway.settings import Settings
from ledger.database import WRITE, advisory_lock_key
from ledger.models import LEDGER_TABLES
from ledger.store import Ledger
from tests.conftest import Database
from tests.gateway.support import POLICIES

MANDATE = Path(sys.executable).parent / "mandate"
OURS = set(model_metadata().tables)
BEFORE_MIGRATIONS = set(baseline_metadata().tables)  # what create_all made: revision 0001's


def settings_for(database: Database, data_dir: Path, *, auto_migrate: bool = True) -> Settings:
    return Settings(
        data_dir=data_dir,
        database_url=database.url,
        database_schema=database.schema,
        policies=POLICIES,
        auto_migrate=auto_migrate,
    )


def mandate_env(database: Database, data_dir: Path) -> dict[str, str]:
    """The ``MANDATE_*`` variables of a `mandate` command on this test's database."""
    env = {"MANDATE_DATA_DIR": str(data_dir), "MANDATE_DATABASE_URL": database.url}
    if database.schema is not None:
        env["MANDATE_DATABASE_SCHEMA"] = database.schema
    return env


def process_env(database: Database, data_dir: Path) -> dict[str, str]:
    """The whole environment of a `mandate` process on this test's database and nothing else."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MANDATE_")}
    return env | mandate_env(database, data_dir)


def mandate(database: Database, data_dir: Path, *args: str) -> Result:
    """Run a `mandate` command in this process (typer's runner), on this test's database."""
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("MANDATE_")}
    return CliRunner().invoke(app, args, env=env | mandate_env(database, data_dir))


def create_gateway_tables(engine: Engine) -> None:
    """The gateway's tables as ``create_all`` made them before migrations (at start, or in
    ``mandate token create``): revision 0001's, whatever later revisions added."""
    baseline = baseline_metadata()
    ledger = {table.name for table in LEDGER_TABLES}
    baseline.create_all(
        engine, tables=[t for t in baseline.tables.values() if t.name not in ledger]
    )


@pytest.fixture
def engine(database: Database, tmp_path: Path) -> Iterator[Engine]:
    """An engine on the test's database, made as the gateway makes its own."""
    made = open_engine(settings_for(database, tmp_path / "data"))
    yield made
    made.dispose()


def tables(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(sa.inspect(conn).get_table_names())


def schema_differences(engine: Engine) -> list[object]:
    with engine.connect() as conn:
        return differences(conn, model_metadata())


def version(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars())


@contextmanager
def holding_the_lock(engine: Engine) -> Iterator[Connection]:
    """Hold what an upgrade takes (SQLite's write lock, the schema's PostgreSQL advisory lock)."""
    with engine.connect().execution_options(**{WRITE: True}) as conn, conn.begin():
        if conn.dialect.name == "postgresql":
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(advisory_lock_key(conn))))
        yield conn


def test_upgrade_makes_the_models_schema_and_a_second_run_changes_nothing(
    database: Database, tmp_path: Path, engine: Engine
) -> None:
    data = tmp_path / "data"
    assert tables(engine) == set()  # an empty database (on SQLite, the file made empty)
    behind = mandate(database, data, "db", "check")
    assert behind.exit_code == 1, behind.stderr
    assert "empty" in behind.stderr
    assert "mandate db upgrade" in behind.stderr

    first = mandate(database, data, "db", "upgrade")
    assert first.exit_code == 0, first.stderr
    assert first.stdout == f"{head()}\n"
    assert f"upgraded from an empty schema to {head()}" in first.stderr
    assert tables(engine) == OURS | {VERSION_TABLE}
    assert schema_differences(engine) == []
    assert version(engine) == [head()]

    second = mandate(database, data, "db", "upgrade")
    assert second.exit_code == 0, second.stderr
    assert "nothing to do" in second.stderr
    assert tables(engine) == OURS | {VERSION_TABLE}
    assert schema_differences(engine) == []
    assert version(engine) == [head()]

    current = mandate(database, data, "db", "current")
    assert (current.exit_code, current.stdout) == (0, f"{head()}\n"), current.stderr
    check = mandate(database, data, "db", "check")
    assert check.exit_code == 0, check.stderr


def test_upgrades_started_together_apply_the_revision_once(
    database: Database, tmp_path: Path, engine: Engine
) -> None:
    data = tmp_path / "data"
    with holding_the_lock(engine) as conn:
        # Every process reaches the lock and waits for it, then they race for it.
        runs = [
            subprocess.Popen(
                [str(MANDATE), "db", "upgrade"],
                env=process_env(database, data),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(3)
        ]
        if conn.dialect.name == "postgresql":
            deadline = time.monotonic() + 60
            # This schema's lock only (other test runs share the server): PostgreSQL shows
            # a bigint key as two 32-bit halves.
            key = advisory_lock_key(conn) & 0xFFFFFFFFFFFFFFFF
            waiting = sa.text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                "AND classid::bigint = :high AND objid::bigint = :low"
            ).bindparams(high=key >> 32, low=key & 0xFFFFFFFF)
            while conn.execute(waiting).scalar_one() < len(runs):
                assert time.monotonic() < deadline, "the upgrades never waited for the lock"
                time.sleep(0.05)
        else:
            # SQLite shows no waiters; a process that comes later finds head, which is fine too.
            time.sleep(3)
    outputs = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0], outputs
    assert [out for out, _ in outputs] == [f"{head()}\n"] * 3
    applied = [err for _, err in outputs if "upgraded from an empty schema" in err]
    assert len(applied) == 1, outputs
    assert sum("nothing to do" in err for _, err in outputs) == 2, outputs
    assert version(engine) == [head()]
    assert schema_differences(engine) == []


def test_a_gateway_that_may_not_migrate_refuses_a_database_behind_and_says_what_to_run(
    database: Database, tmp_path: Path, engine: Engine
) -> None:
    data = tmp_path / "data"
    with socket.socket() as sock:  # a free port; the gateway stops before it listens anyway
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    served = subprocess.run(
        [str(MANDATE), "serve", "--port", port, "--policies", str(POLICIES)],
        env=process_env(database, data) | {"MANDATE_AUTO_MIGRATE": "false"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert served.returncode != 0
    assert "run `mandate db upgrade`" in served.stderr
    assert "auto_migrate=false" in served.stderr
    assert tables(engine) & (OURS | {VERSION_TABLE}) == set()  # it changed nothing

    settings = settings_for(database, data, auto_migrate=False)
    with pytest.raises(SchemaError, match="run `mandate db upgrade`"):
        Runtime.start(settings)

    upgraded = mandate(database, data, "db", "upgrade")
    assert upgraded.exit_code == 0, upgraded.stderr
    runtime = Runtime.start(settings)
    try:
        assert runtime.ledger.size() > 0  # it opened the ledger and wrote the first key entry
    finally:
        runtime.close()


def test_a_gateway_brings_an_empty_database_to_head_itself(
    database: Database, tmp_path: Path, engine: Engine
) -> None:
    runtime = Runtime.start(settings_for(database, tmp_path / "data"))
    runtime.close()
    assert version(engine) == [head()]
    assert schema_differences(engine) == []


def test_a_database_made_by_create_all_is_adopted_with_its_rows(
    database: Database, tmp_path: Path, engine: Engine
) -> None:
    # What Mandate did before migrations: create_all at start (the tables of revision 0001,
    # which the ledger's later models differ from), then rows.
    old = settings_for(database, tmp_path / "data")
    baseline_metadata().create_all(engine)
    # ledger.database.create_tables, a key entry; no subject key (it came later, with 0003)
    with Ledger(engine, origin=old.ledger_origin, signer=signing_key(old)).open() as ledger:
        size = ledger.size()
    token, identity = TokenBook(engine).create(name="bot", role="booking-agent")
    assert VERSION_TABLE not in tables(engine)
    assert schema_state(engine).unversioned_tables == tuple(sorted(BEFORE_MIGRATIONS))

    runtime = Runtime.start(old)
    try:
        assert runtime.tokens.lookup(token) == identity
        assert runtime.ledger.size() >= size
    finally:
        runtime.close()
    assert version(engine) == [head()]
    assert schema_differences(engine) == []


def test_tables_an_older_token_command_made_before_any_start_are_adopted(
    database: Database, tmp_path: Path, engine: Engine
) -> None:
    create_gateway_tables(engine)  # what `mandate token create` did before migrations
    token, _ = TokenBook(engine).create(name="bot", role="booking-agent")

    upgraded = mandate(database, tmp_path / "data", "db", "upgrade")
    assert upgraded.exit_code == 0, upgraded.stderr
    gateway_tables = len(BEFORE_MIGRATIONS) - len(LEDGER_TABLES)  # token create: the gateway's
    assert f"adopted {gateway_tables} tables made before migrations" in upgraded.stderr
    assert "empty schema" not in upgraded.stderr
    assert version(engine) == [head()]
    assert schema_differences(engine) == []  # the ledger's tables were made too
    assert TokenBook(engine).lookup(token) is not None


def test_a_token_command_on_an_empty_database_brings_it_to_head(
    database: Database, tmp_path: Path, engine: Engine
) -> None:
    made = mandate(
        database, tmp_path / "data", "token", "create", "--name", "bot", "--role",
        "booking-agent", "--policies", str(POLICIES),
    )  # fmt: skip
    assert made.exit_code == 0, made.stderr
    assert version(engine) == [head()]
    assert schema_differences(engine) == []
    assert TokenBook(engine).lookup(made.stdout.strip()) is not None


def test_tables_that_differ_from_mandates_are_left_alone(
    database: Database, tmp_path: Path, engine: Engine
) -> None:
    create_gateway_tables(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE gateway_tokens DROP COLUMN revoked_at"))
    before = tables(engine)

    refused = mandate(database, tmp_path / "data", "db", "upgrade")
    assert refused.exit_code == 1, refused.stderr
    assert "missing column gateway_tokens.revoked_at" in refused.stderr
    assert tables(engine) == before  # nothing stamped, no ledger tables made
    check = mandate(database, tmp_path / "data", "db", "check")
    assert check.exit_code == 1
    assert "from before migrations" in check.stderr


def test_a_database_that_cannot_be_opened_is_a_usage_error(tmp_path: Path) -> None:
    nowhere = Database(f"sqlite:///{tmp_path / 'no-such-dir' / 'mandate.db'}")
    for command in ("upgrade", "current", "check"):
        run = mandate(nowhere, tmp_path / "data", "db", command)
        assert run.exit_code == 2, (command, run.stderr)
        assert "cannot use the database" in run.stderr


def test_a_database_a_newer_mandate_upgraded_is_refused(
    database: Database, tmp_path: Path, engine: Engine
) -> None:
    data = tmp_path / "data"
    assert mandate(database, data, "db", "upgrade").exit_code == 0
    with engine.begin() as conn:  # as a later revision would leave it
        conn.execute(sa.text(f"UPDATE {VERSION_TABLE} SET version_num = '9999'"))

    for command in ("upgrade", "check"):
        run = mandate(database, data, "db", command)
        assert run.exit_code == 1, (command, run.stderr)
        assert "9999, which this version of Mandate does not know" in run.stderr
    with pytest.raises(SchemaError, match="a newer Mandate upgraded it"):
        Runtime.start(settings_for(database, data))  # auto_migrate on: still refused
    assert version(engine) == ["9999"]


def test_revision_0005_fills_the_inbox_columns_of_approvals_made_before_it(
    database: Database, tmp_path: Path
) -> None:
    """An approval held before 0005 is found by the inbox's filters, search and counts after
    it: its executor, action type, resource and reason codes come from its summary."""
    engine = open_engine(settings_for(database, tmp_path / "data"))
    try:
        with engine.begin() as conn:
            alembic_command.upgrade(_config(conn), "0004")
            summary = {
                "executor": "payments-agent",
                "action_type": "refund.issue",
                "resource": "booking/B-1041",
                "amount": "84.50",
                "confidence": "0.9",
                "reasons": [
                    {"code": "advisory_level", "message": "level 1", "source": "rego"},
                    {"code": "high_value", "message": "over 50", "source": "rego"},
                ],
                "recommendation": "execute",
            }
            conn.execute(
                sa.text(
                    "INSERT INTO gateway_approvals (id, action_id, workflow, case_type, status, "
                    "quorum, expires_at, created_at, bundle_digest, proposal_digest, "
                    "proposer_owner, summary) VALUES ('apr_1', 'act_1', 'parking', "
                    "'refund.issue', 'pending', 1, '2999-01-01T00:00:00.000000Z', "
                    "'2026-01-01T00:00:00.000000Z', 'b', 'p', 'payments-agent', :summary)"
                ),
                {"summary": orjson.dumps(summary)},
            )
        upgrade(engine)
        now = dt.datetime(2026, 1, 1, 0, 30, tzinfo=dt.UTC)
        with engine.connect() as conn:
            row = conn.execute(
                sa.text(
                    "SELECT executor, action_type, resource, reason_codes FROM gateway_approvals"
                )
            ).one()
            assert tuple(row) == (
                "payments-agent",
                "refund.issue",
                "booking/B-1041",
                " advisory_level high_value ",
            )
            found = read_page(conn, InboxQuery(reason="high_value", q="B-1041"), sa.true(), now)
        assert [r.id for r in found.rows] == ["apr_1"]
        assert dict(found.facets["reason"]) == {"advisory_level": 1, "high_value": 1}
        assert dict(found.facets["age"])["hour"] == 1
    finally:
        engine.dispose()
