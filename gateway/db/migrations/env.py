"""Alembic's environment: runs the revisions on the connection ``gateway.db.migrations`` hands over.

That connection is already in the transaction that holds the upgrade lock, so every revision
runs inside it (Alembic begins no transaction of its own in one it did not start) and the
version table changes in the same commit as the tables.
"""

from __future__ import annotations

from alembic import context

from gateway.db.migrations import VERSION_TABLE


def run() -> None:
    """Apply the revisions Alembic was asked for, on the caller's connection."""
    connection = context.config.attributes.get("connection")
    if connection is None:
        # The bare `alembic` command would open a connection of its own, without the lock.
        raise RuntimeError("run migrations with `mandate db upgrade`, not the alembic command")
    context.configure(connection=connection, version_table=VERSION_TABLE)
    with context.begin_transaction():
        context.run_migrations()


# Alembic executes this file by its path; imported as a module of the package (the tests import
# every module) there is no migration to run.
if __name__ != "gateway.db.migrations.env":
    run()
