"""What the history signals and the warnings figure read: ``input.history`` and ``warnings``.

Revision ID: 0004
Revises: 0003

``gateway_actions`` gains ``resource_digest`` (SHA-256 of the proposal's resource) and three
indexes: by executor and action type, by executor and time, by workflow and resource digest.
``gateway_figures`` gains ``amount`` (the proposal's ``params.amount``) and the flag ``warned``.
Rows of before this revision have none of them: the history signals count from it on (an
executor's earlier proposals of an action type are found by the executor and action type
columns, which every row has).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add the columns and the indexes."""
    op.add_column("gateway_actions", sa.Column("resource_digest", sa.String(64), nullable=True))
    op.create_index(
        "ix_gateway_actions_executor_type",
        "gateway_actions",
        ["executor", "workflow", "action_type"],
    )
    op.create_index(
        "ix_gateway_actions_executor_time", "gateway_actions", ["executor", "created_at"]
    )
    op.create_index(
        "ix_gateway_actions_resource", "gateway_actions", ["workflow", "resource_digest"]
    )
    op.add_column(
        "gateway_figures",
        sa.Column("warned", sa.Integer(), nullable=False, server_default=sa.text("0")),
    )
    op.add_column("gateway_figures", sa.Column("amount", sa.String(64), nullable=True))
