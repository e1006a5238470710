"""The first schema: the gateway's tables and the ledger's, as create_all made them.

Revision ID: 0001
Revises: (none)

There is no downgrade: the ledger is append-only evidence, and going back is restoring a backup.
"""

from __future__ import annotations

from alembic import op

from gateway.db.migrations.baseline import baseline_metadata

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create every table of the baseline (none exists yet: adopted databases are stamped)."""
    baseline_metadata().create_all(op.get_bind(), checkfirst=False)
