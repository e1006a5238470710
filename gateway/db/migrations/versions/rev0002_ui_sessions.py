"""The inbox's sessions, kept in the database so that signing out ends them on the server.

Revision ID: 0002
Revises: 0001

Before it, a session was only a signed cookie: signing out replaced the browser's cookie, but a
copy of the old one signed in until it was 12 hours old. Sessions signed in before this revision
end with it (their cookies name no row); people sign in again.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create ``gateway_ui_sessions``: the SHA-256 of a session's id, its token, when made."""
    op.create_table(
        "gateway_ui_sessions",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("token_id", sa.String(32), nullable=False),
        sa.Column("created_at", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_gateway_ui_sessions_created_at", "gateway_ui_sessions", ["created_at"])
