"""Schema migrations (Alembic) of the gateway's database: the gateway's tables and the ledger's.

The revisions live in ``versions/``. ``mandate db upgrade`` applies them, and a gateway applies
them itself when it starts unless ``auto_migrate`` is off, in which case it refuses to start on
a database behind this code. Every upgrade runs in one transaction that holds the ledger's
append lock (SQLite ``BEGIN IMMEDIATE``; on PostgreSQL the advisory lock of the schema in the
search path), so processes that start together apply each revision once: the others wait, then
find the database at head. It is the *ledger's* lock so that a ledger opening meanwhile
(``ledger.database.create_tables`` takes the same lock) cannot race the creation of its tables.

A database made before migrations existed (``create_all`` at start) has the tables but no
version table: it is *adopted*: its tables are compared with revision 0001's, the missing ones
are made, and it is stamped 0001.

To change the schema: change the models, add ``versions/rev<NNNN>_<slug>.py`` whose
``down_revision`` is the current head, and run ``tests/gateway/test_migrations.py``: it fails
while the upgraded schema differs from the models.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine

from gateway.db.migrations.baseline import baseline_metadata
from gateway.db.tables import GATEWAY_TABLES
from ledger.database import WRITE, advisory_lock_key
from ledger.models import LEDGER_TABLES

__all__ = [
    "BASELINE",
    "VERSION_TABLE",
    "SchemaError",
    "SchemaState",
    "Upgrade",
    "describe_difference",
    "differences",
    "ensure_schema",
    "head",
    "model_metadata",
    "schema_fault",
    "schema_state",
    "upgrade",
]

# Our own name, so that another application using Alembic in the same schema keeps its own.
VERSION_TABLE = "mandate_alembic_version"
BASELINE = "0001"
UPGRADE_HINT = "run `mandate db upgrade`"


class SchemaError(RuntimeError):
    """The database's schema is not one this gateway can work on, or bring up to date."""


@dataclass(frozen=True)
class SchemaState:
    """Where a database stands against this code's revisions."""

    current: str | None  # the revision it is stamped with; None: no version table, or empty
    head: str
    unversioned_tables: tuple[str, ...]  # ours, present without a version (made by create_all)
    known: bool  # False: stamped by a newer Mandate with a revision this code lacks

    @property
    def at_head(self) -> bool:
        """Nothing to apply."""
        return self.current == self.head

    def describe(self) -> str:
        """One sentence for people: where the database is and what brings it to head."""
        if self.at_head:
            return f"the database is at revision {self.head} (head)"
        if not self.known:
            return (
                f"the database is at revision {self.current}, which this version of Mandate "
                f"does not know (head {self.head}): a newer Mandate upgraded it; run that one"
            )
        if self.unversioned_tables:
            return (
                f"the database has Mandate's tables from before migrations but no revision; "
                f"{UPGRADE_HINT} to check them and stamp them (head {self.head})"
            )
        where = f"at revision {self.current}" if self.current else "empty"
        return f"the database is {where}, behind head {self.head}: {UPGRADE_HINT}"


@dataclass(frozen=True)
class Upgrade:
    """What an upgrade did."""

    before: SchemaState
    after: str
    adopted: tuple[str, ...]  # tables from before migrations that it checked and stamped

    @property
    def start(self) -> str | None:
        """The revision the database was at when revisions began to apply (adopted: 0001)."""
        return BASELINE if self.adopted else self.before.current

    @property
    def applied(self) -> bool:
        """Whether it applied revisions (false too when another process had just done it)."""
        return self.start != self.after


@functools.cache
def _script() -> ScriptDirectory:
    """The revisions (parsed once a process: every gateway start and CLI command reads them)."""
    return ScriptDirectory.from_config(_config())


def _config(connection: Connection | None = None) -> Config:
    """An Alembic config built in code: the scripts are this package, no alembic.ini."""
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head() -> str:
    """The newest revision this code has."""
    revision = _script().get_current_head()
    assert revision is not None, "gateway/db/migrations/versions has no revision"
    return revision


def model_metadata() -> sa.MetaData:
    """The tables the code works on (the gateway's and the ledger's models), on their own:
    what the database at head must equal."""
    metadata = sa.MetaData()
    for table in (*GATEWAY_TABLES, *LEDGER_TABLES):
        table.to_metadata(metadata)
    return metadata


def _context(conn: Connection, **opts: Any) -> MigrationContext:
    return MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE, **opts})


def _state(conn: Connection) -> SchemaState:
    current = _context(conn).get_current_revision()
    known = current is None or current in {r.revision for r in _script().walk_revisions()}
    unversioned: tuple[str, ...] = ()
    if current is None:
        ours = set(baseline_metadata().tables)
        unversioned = tuple(sorted(ours & set(sa.inspect(conn).get_table_names())))
    return SchemaState(current, head(), unversioned, known)


def schema_state(engine: Engine) -> SchemaState:
    """Where the database stands; reads only, takes no lock."""
    with engine.connect() as conn:
        return _state(conn)


def schema_fault(engine: Engine) -> str | None:
    """Why a running gateway cannot work on its database's schema, or None when it is at head.

    Its tables all gone (the database dropped and made again, or replaced by an empty one): a
    gateway that opened the old one must start again on the new one, whose ledger begins anew.
    """
    state = schema_state(engine)
    if state.at_head:
        return None
    if state.current is None and not state.unversioned_tables:
        return (
            "the database has no Mandate tables (dropped, or replaced by an empty one?): "
            f"restore it, or {UPGRADE_HINT} and restart the gateway"
        )
    return state.describe()


def differences(conn: Connection, metadata: sa.MetaData) -> list[Any]:
    """Alembic autogenerate's differences between the database and ``metadata``, for the tables
    of ``metadata`` only: other tables in the schema (another application's) are not ours."""
    names = set(metadata.tables)

    def ours(name: str | None, type_: str, _parents: object) -> bool:
        return type_ != "table" or name in names

    context = _context(conn, include_name=ours, compare_server_default=True)
    return list(compare_metadata(context, metadata))


def describe_difference(difference: Any) -> str:
    """One of :func:`differences`, as people read it: what the database lacks or has more."""
    if isinstance(difference, list):  # changes to one column: [("modify_type", s, t, c, ...)]
        _, _, table, column, *_ = difference[0]
        changed = ", ".join(change[0].removeprefix("modify_") for change in difference)
        return f"column {table}.{column} differs ({changed})"
    verb, *details = difference
    change, _, kind = verb.partition("_")
    thing = details[-1]
    name = f"{details[-2]}.{thing.name}" if kind == "column" else getattr(thing, "name", thing)
    return f"{'missing' if change == 'add' else 'unexpected'} {kind} {name}"


@contextmanager
def _locked(engine: Engine) -> Iterator[Connection]:
    """A connection in a transaction that holds the ledger's append lock until it commits."""
    with engine.connect().execution_options(**{WRITE: True}) as conn, conn.begin():
        if conn.dialect.name == "postgresql":
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(advisory_lock_key(conn))))
        yield conn


def _adopt(conn: Connection, present: tuple[str, ...]) -> None:
    """Stamp a database made by create_all at the baseline, after checking its tables are the
    baseline's; make the baseline tables it lacks (a CLI command made only the gateway's)."""
    baseline = baseline_metadata()
    expected = sa.MetaData()
    for name in present:
        baseline.tables[name].to_metadata(expected)
    found = differences(conn, expected)
    if found:
        raise SchemaError(
            "the database has Mandate's tables but they differ from what Mandate made before "
            f"migrations (revision {BASELINE}), so they are left alone: "
            + "; ".join(map(describe_difference, found))
        )
    missing = [table for name, table in baseline.tables.items() if name not in present]
    baseline.create_all(conn, tables=missing, checkfirst=False)
    _context(conn).stamp(_script(), BASELINE)


def upgrade(engine: Engine) -> Upgrade:
    """Bring the database to head under the lock: adopt tables from before migrations, then
    apply the revisions it lacks. At head it changes nothing."""
    with _locked(engine) as conn:
        before = _state(conn)  # read under the lock: another process may have just upgraded
        if not before.known:
            raise SchemaError(before.describe())
        if before.unversioned_tables:
            _adopt(conn, before.unversioned_tables)
        if not before.at_head:
            command.upgrade(_config(conn), "head")
            after = _state(conn)
            if not after.at_head:  # never report an upgrade that did not happen
                raise SchemaError(f"the upgrade ended short of head: {after.describe()}")
        return Upgrade(before, head(), before.unversioned_tables)


def ensure_schema(engine: Engine, *, auto_migrate: bool) -> None:
    """At start: do nothing at head; otherwise upgrade, or with ``auto_migrate`` off refuse
    with a :class:`SchemaError` that says to run ``mandate db upgrade``."""
    state = schema_state(engine)
    if state.at_head:
        return
    if not state.known:
        raise SchemaError(state.describe())
    if not auto_migrate:
        raise SchemaError(
            f"{state.describe()}; this gateway does not upgrade it itself (auto_migrate=false)"
        )
    upgrade(engine)
