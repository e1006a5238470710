"""The options of the commands that work on this machine's data dir and database directly
(--data-dir, --database-url, --policies), the settings they make, and the database opened as a
starting gateway opens it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from gateway.cli.console import fail
from gateway.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

__all__ = ["DataDir", "DatabaseUrl", "Policies", "open_database", "settings_from"]

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        envvar="MANDATE_DATA_DIR",
        help="Where the SQLite database and the signing key live [default: ./.mandate].",
        show_default=False,
    ),
]
DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        envvar="MANDATE_DATABASE_URL",
        help="SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db [default: SQLite in the "
        "data dir].",
        show_default=False,
    ),
]
Policies = Annotated[
    Path | None,
    typer.Option(
        "--policies",
        envvar="MANDATE_POLICIES",
        help="The policy bundle directory [default: ./policies].",
        show_default=False,
    ),
]


def settings_from(data_dir: Path | None, database_url: str | None, **more: Any) -> Settings:
    """Settings with the command line's values over the environment and ``mandate.toml``."""
    given = {k: v for k, v in more.items() if v is not None}
    if data_dir is not None:
        given["data_dir"] = data_dir
    if database_url is not None:
        given["database_url"] = database_url
    return Settings(**given)


def open_database(settings: Settings) -> Engine:
    """The database of ``settings``, its schema brought to head as a starting gateway would
    (or refused, exit 2, when it cannot be: ``auto_migrate=false``, a newer revision)."""
    from gateway.db.connect import open_engine
    from gateway.db.migrations import SchemaError, ensure_schema

    engine = open_engine(settings)
    try:
        ensure_schema(engine, auto_migrate=settings.auto_migrate)
    except SchemaError as exc:
        engine.dispose()
        raise fail(str(exc)) from None
    return engine
