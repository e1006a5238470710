"""Fixtures: the real gateway served by uvicorn on loopback, on SQLite and on PostgreSQL."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import Database
from tests.gateway.support import POLICIES, Gateway, Serve, serve


@pytest.fixture
def serve_gateway(tmp_path: Path) -> Iterator[Serve]:
    """Start gateways on demand (each with its own data dir unless given one); all stop after
    the test."""
    running: list[Gateway] = []
    count = itertools.count()

    def start(
        database: Database,
        *,
        policies: Path = POLICIES,
        opa_url: str | None = None,
        clock: Callable[[], dt.datetime] | None = None,
        data_dir: Path | None = None,
    ) -> Gateway:
        gateway = serve(
            database,
            data_dir or tmp_path / f"data-{next(count)}",
            policies=policies,
            opa_url=opa_url,
            clock=clock,
        )
        running.append(gateway)
        return gateway

    yield start
    for gateway in running:
        gateway.stop()


@pytest.fixture
def gateway(database: Database, serve_gateway: Serve) -> Gateway:
    """The gateway with the default bundle, once on SQLite and once on PostgreSQL."""
    return serve_gateway(database)


@pytest.fixture(scope="module")
def sqlite_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One gateway with the default bundle on SQLite, shared by a module's tests, for what does
    not depend on the database. Tests compare what they wrote with what was there before."""
    root = tmp_path_factory.mktemp("gateway")
    gateway = serve(Database(f"sqlite:///{root / 'mandate.db'}"), root / "data")
    yield gateway
    gateway.stop()
