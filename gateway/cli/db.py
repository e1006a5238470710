"""``mandate db``: the database's schema (the gateway's tables and the ledger's, Alembic
migrations in ``gateway/db/migrations``): bring it up to date, show its revision, check it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from gateway.cli.console import err, fail
from gateway.cli.local import DatabaseUrl, DataDir, open_database, settings_from
from gateway.wording import counted

__all__ = ["db_app"]

db_app = typer.Typer(
    help=(
        "The database's schema (the gateway's tables and the ledger's): bring it up to date, "
        "show its revision, check it. A gateway brings its database up to date itself when it "
        "starts, unless auto_migrate is off (MANDATE_AUTO_MIGRATE=false): then run `mandate db "
        "upgrade` after installing a new Mandate, before starting the gateways."
    ),
    no_args_is_help=True,
)


def _schema_state(data_dir: Path | None, database_url: str | None) -> Any:
    """Where the database stands against this code's revisions (exit 2 if it is unreachable)."""
    import sqlalchemy.exc

    from gateway.db.migrations import schema_state

    engine = open_database(settings_from(data_dir, database_url), create=False, migrate=False)
    try:
        return schema_state(engine)
    except sqlalchemy.exc.OperationalError as exc:
        raise fail(f"cannot use the database: {exc.orig or exc}") from None
    finally:
        engine.dispose()


@db_app.command("upgrade")
def db_upgrade(data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """Apply the migrations this database lacks, so that this version of Mandate can use it.

    When: after installing a new Mandate, if the gateways run with auto_migrate=false;
    or to prepare a new PostgreSQL database before the first gateway starts.
    Safe to repeat, and to run from several hosts at once: one applies each revision.
    A database made before migrations existed is checked, then stamped with revision 0001.
    Prints the revision on stdout.

    Exit 0 up to date, 1 the tables are not what Mandate expects (nothing was changed),
    2 the database cannot be reached.
    """
    import sqlalchemy.exc

    from gateway.db.migrations import BASELINE, SchemaError, upgrade

    engine = open_database(settings_from(data_dir, database_url), migrate=False)
    try:
        done = upgrade(engine)
    except SchemaError as exc:
        raise fail(str(exc), code=1) from None
    except sqlalchemy.exc.OperationalError as exc:
        raise fail(f"cannot use the database: {exc.orig or exc}") from None
    finally:
        engine.dispose()
    if done.adopted:
        err.print(
            f"adopted {counted(len(done.adopted), 'table')} made before migrations: they match "
            f"revision {BASELINE}, which is now stamped",
            highlight=False,
        )
    if done.applied:
        start = done.start or "an empty schema"
        err.print(f"upgraded from {start} to {done.after} (head)", highlight=False)
    elif not done.adopted:
        err.print(f"already at head {done.after}; nothing to do", highlight=False)
    print(done.after)


@db_app.command("current")
def db_current(data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """Print the database's revision (alone on stdout; nothing if it has none).

    On stderr: how it compares with this version of Mandate's head, and what to run.
    """
    state = _schema_state(data_dir, database_url)
    if state.current is not None:
        print(state.current)
    err.print(state.describe(), highlight=False, soft_wrap=True)


@db_app.command("check")
def db_check(data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """Check that the database is at this version of Mandate's head.

    For deployment scripts with auto_migrate=false. Exit 0 at head;
    1 behind it, or upgraded by a newer Mandate (it says what to run);
    2 the database cannot be reached.
    """
    state = _schema_state(data_dir, database_url)
    if not state.at_head:
        raise fail(state.describe(), code=1)
    err.print(state.describe(), highlight=False)
