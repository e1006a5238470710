"""Shared fixtures: real SQLite files and real PostgreSQL schemas, one per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

PG_ENV = "MANDATE_TEST_DATABASE_URL"


@dataclass(frozen=True)
class Database:
    """Where a test's rows live: a URL and, on PostgreSQL, a schema of the test's own."""

    url: str
    schema: str | None = None

    @property
    def backend(self) -> str:
        return "postgresql" if self.url.startswith("postgresql") else "sqlite"


def postgres_url() -> str:
    url = os.environ.get(PG_ENV)
    if not url:
        pytest.skip(
            f"{PG_ENV} is not set, so the PostgreSQL tests are skipped; "
            "set it to postgresql+psycopg://postgres@127.0.0.1:5432/test (as .ci/run does)"
        )
    return url


@pytest.fixture
def pg_database() -> Iterator[Database]:
    """A fresh schema in the test PostgreSQL, dropped afterwards."""
    url = postgres_url()
    schema = f"mandate_test_{os.getpid()}_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(url)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield Database(url, schema)
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def sqlite_database(tmp_path: Path) -> Database:
    """A fresh SQLite file."""
    return Database(f"sqlite:///{tmp_path / 'mandate.db'}")


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest) -> Database:
    """Each test that takes this runs on SQLite and on PostgreSQL."""
    name = "sqlite_database" if request.param == "sqlite" else "pg_database"
    db = request.getfixturevalue(name)
    assert isinstance(db, Database)
    return db
