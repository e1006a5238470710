"""The hot path's short reads (``gateway.db.kept``): each thread keeps a driver connection, a
connection the server closed meanwhile is replaced and the read made again, and one that
cannot be replaced is an ``OperationalError`` that says so, quietly: no pool traceback in the
log for a connection known to be gone."""

from __future__ import annotations

import logging

import pytest
import sqlalchemy as sa

from gateway.db.kept import KeptReads
from tests.conftest import postgres_url

_ONE = sa.select(sa.literal(1).label("one"))


def _terminate(admin: sa.Engine, reads: KeptReads) -> None:
    """End this thread's kept connection from the server's side, as a restart would."""
    pid = reads._local.conn.dbapi_connection.info.backend_pid
    with admin.connect() as conn:
        conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})


def test_a_connection_the_server_closed_is_replaced_without_an_error_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = sa.create_engine(postgres_url())
    reads = KeptReads(engine)
    try:
        one = reads.prepare(_ONE)
        assert reads.rows(one, {}) == [(1,)]
        kept = reads._local.conn
        _terminate(engine, reads)
        with caplog.at_level(logging.DEBUG):
            assert reads.rows(one, {}) == [(1,)]
        assert reads._local.conn is not kept
        assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    finally:
        reads.close()
        engine.dispose()


def test_a_database_that_cannot_be_reached_is_an_operational_error() -> None:
    engine = sa.create_engine(
        "postgresql+psycopg://postgres@127.0.0.1:1/none", connect_args={"connect_timeout": 2}
    )
    reads = KeptReads(engine)
    with pytest.raises(sa.exc.OperationalError):
        reads.rows(reads.prepare(_ONE), {})
    reads.close()
    engine.dispose()


def test_reads_take_parameters_by_name_on_sqlite_and_postgresql() -> None:
    # SQLite's driver takes parameters by position, psycopg's by name: compiled once for each.
    statement = sa.select(
        sa.bindparam("a", type_=sa.Integer) + 1, sa.bindparam("b", type_=sa.String)
    )
    for url in ("sqlite://", postgres_url()):
        engine = sa.create_engine(url)
        reads = KeptReads(engine)
        try:
            assert reads.rows(reads.prepare(statement), {"b": "x", "a": 41}) == [(42, "x")]
        finally:
            reads.close()
            engine.dispose()
