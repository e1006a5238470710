"""The options of the commands that work on this machine's data dir and database directly
(--data-dir, --database-url, --policies), the settings they make, and the database and ledger
opened for them.

Custody: a command that reads (a ledger export, a proof, the schema's revision) never makes
what it reads. Where there is no data dir, database, ledger or key it says so and exits 2: a new,
empty ledger made on the spot would verify, and could be handed to an auditor as the real one.
Only `mandate serve` (and the commands that set a gateway up: `token create`, `db upgrade`,
`policy activate`) make them. A database URL that cannot be used is one line that names it,
password hidden, and why, exit 2, whatever the command; so is any other setting that cannot be
used (``settings_from``).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError
from pydantic_settings import SettingsError

from gateway.cli.console import fail
from gateway.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from ledger.store import Ledger

__all__ = [
    "DataDir",
    "DatabaseUrl",
    "Policies",
    "check_data_dir",
    "open_database",
    "open_existing_ledger",
    "settings_from",
    "shown_url",
]

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        envvar="MANDATE_DATA_DIR",
        help="Where the SQLite database and the ledger's keys live.",
        show_default="./.mandate",
    ),
]
DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        envvar="MANDATE_DATABASE_URL",
        help="SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db.",
        show_default="SQLite in the data dir",
    ),
]
Policies = Annotated[
    Path | None,
    typer.Option(
        "--policies",
        envvar="MANDATE_POLICIES",
        help="The policy bundle directory.",
        show_default="./policies",
    ),
]

_WANTED = "want sqlite:///FILE or postgresql+psycopg://USER@HOST/DATABASE"
# user:password@ in a URL too broken to parse: the password is hidden all the same.
_PASSWORD = re.compile(r"(//[^:/@]*:)[^@]*@")


def settings_from(data_dir: Path | None, database_url: str | None, **more: Any) -> Settings:
    """Settings with the command line's values over the environment and ``mandate.toml``."""
    given = {k: v for k, v in more.items() if v is not None}
    if data_dir is not None:
        given["data_dir"] = data_dir
    if database_url is not None:
        given["database_url"] = database_url
    try:
        return Settings(**given)
    except ValidationError as exc:
        problem = exc.errors()[0]
        name = ".".join(str(part) for part in problem["loc"])
        where = f"the setting {name} (MANDATE_{name.upper()}, mandate.toml or its option)"
        raise fail(f"{where if name else 'the settings'}: {problem['msg']}") from None
    except SettingsError as exc:  # a value that is not the JSON a dict or list setting takes
        raise fail(f"the settings: {exc} (it takes JSON)") from None
    except tomllib.TOMLDecodeError as exc:
        raise fail(f"mandate.toml in {Path.cwd()}: {exc}") from None


def shown_url(settings: Settings) -> str:
    """The database URL as messages show it: its password hidden, its schema named."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        shown = make_url(settings.database).render_as_string(hide_password=True)
    except ArgumentError:
        shown = _PASSWORD.sub(r"\1***@", settings.database)
    return (
        shown
        if settings.database_schema is None
        else f"{shown} (schema {settings.database_schema})"
    )


def check_data_dir(settings: Settings) -> None:
    """Refuse (exit 2) a data dir that is not there: a command that reads never makes one."""
    if not settings.data_dir.is_dir():
        raise fail(
            f"no data dir at {settings.data_dir.absolute()}: nothing to read there (a gateway "
            "makes it on its first start, `mandate serve`); give --data-dir, or "
            "MANDATE_DATA_DIR, the one the gateway uses"
        )


def open_database(settings: Settings, *, create: bool = True, migrate: bool = True) -> Engine:
    """The database of ``settings``, reached once, its schema brought to head as a starting
    gateway would (``migrate``; refused, exit 2, when it cannot be: ``auto_migrate=false``, a
    newer revision).

    Without ``create``, a data dir or SQLite file that is not there is refused, not made. A URL
    that cannot be used (an unknown kind, a directory that does not exist, a server that
    refuses) is one line and exit 2.
    """
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    from gateway.db.connect import open_engine
    from gateway.db.migrations import SchemaError, ensure_schema

    shown = shown_url(settings)
    try:
        url = make_url(settings.database)
        url.get_dialect()
    except NoSuchModuleError:  # an ArgumentError too: first
        raise fail(
            f"cannot use the database {shown}: no kind of database is named "
            f"{url.drivername} ({_WANTED})"
        ) from None
    except ArgumentError:
        raise fail(f"cannot use the database {shown}: not a database URL ({_WANTED})") from None
    if not create and settings.database_url is None:
        check_data_dir(settings)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        file = Path(url.database)
        if not (create and settings.database_url is None) and not file.parent.is_dir():
            raise fail(
                f"cannot use the database {shown}: the directory {file.parent} does not exist"
            )
        if not create and not file.exists():
            raise fail(
                f"no database at {file}: nothing to read there (a gateway makes it on its "
                "first start, `mandate serve`)"
            )
    try:
        engine = open_engine(settings, create=create)
    except ImportError as exc:
        raise fail(
            f"cannot use the database {shown}: its driver is not installed ({exc})"
        ) from None
    try:
        with _database_errors(settings):
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
            if migrate:
                ensure_schema(engine, auto_migrate=settings.auto_migrate)
    except SchemaError as exc:
        engine.dispose()
        raise fail(str(exc)) from None
    except BaseException:
        engine.dispose()
        raise
    return engine


@contextmanager
def open_existing_ledger(
    settings: Settings, *, sign: bool = True, erase: bool = False
) -> Iterator[Ledger]:
    """The ledger a gateway wrote, never a new one: refused (exit 2) where there is no data dir,
    database, ledger or key. ``sign``: with the signing key, to sign a checkpoint or append;
    ``erase``: with the subject key too. The database's failures meanwhile are one line, exit 2.
    """
    import sqlalchemy as sa

    from gateway.db.connect import keyring, signing_key, subject_key
    from ledger.errors import LedgerError
    from ledger.models import ENTRIES
    from ledger.store import Ledger

    engine = open_database(settings, create=False, migrate=False)
    try:
        with _database_errors(settings):
            with engine.connect() as conn:
                held = sa.inspect(conn).has_table(ENTRIES.name) and (
                    conn.execute(sa.select(ENTRIES.c.seq).limit(1)).first() is not None
                )
            if not held:
                raise fail(
                    f"the database {shown_url(settings)} holds no ledger: no gateway has written "
                    "to it (is it the one the gateway uses?)"
                )
            try:
                ledger = Ledger(
                    engine,
                    origin=settings.ledger_origin,
                    signer=signing_key(settings, create=False) if sign else None,
                    checkpoint_every=settings.checkpoint_every,
                    checkpoint_interval=settings.checkpoint_interval,
                    subject_key=subject_key(settings, create=False) if erase else None,
                    keyring=keyring(settings),
                ).open()
            except LedgerError as exc:
                raise fail(exc.diagnostics()) from None
            with ledger:
                yield ledger
    finally:
        engine.dispose()


@contextmanager
def _database_errors(settings: Settings) -> Iterator[None]:
    """The database's failures in the block as one line naming it (password hidden), exit 2."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except SQLAlchemyError as exc:
        cause = getattr(exc, "orig", None) or exc
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        raise fail(f"cannot use the database {shown_url(settings)}: {first}") from None
