"""What the inbox filters, searches, counts and sorts by, as columns and indexes.

Revision ID: 0005
Revises: 0004

``gateway_approvals`` gains ``executor``, ``action_type`` and ``resource`` (copies of its JSON
summary's, to filter and search in SQL) and indexes by status with time, expiry and workflow
with action type. ``gateway_approval_reasons`` holds each approval's reason codes. Rows of
before this revision are filled from their summaries.
"""

from __future__ import annotations

import orjson
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add the columns, the reasons table and the indexes; fill them from the summaries."""
    for name, length in (("executor", 128), ("action_type", 128), ("resource", 256)):
        op.add_column(
            "gateway_approvals",
            sa.Column(name, sa.String(length), nullable=False, server_default=sa.text("''")),
        )
    op.create_table(
        "gateway_approval_reasons",
        sa.Column("approval_id", sa.String(40), nullable=False),
        sa.Column("code", sa.String(128), nullable=False),
        sa.PrimaryKeyConstraint("approval_id", "code"),
    )
    op.create_index(
        "ix_gateway_approval_reasons_code", "gateway_approval_reasons", ["code", "approval_id"]
    )
    for name, columns in (
        ("ix_gateway_approvals_status_created", ["status", "created_at"]),
        ("ix_gateway_approvals_status_expires", ["status", "expires_at"]),
        ("ix_gateway_approvals_status_type", ["status", "workflow", "action_type"]),
    ):
        op.create_index(name, "gateway_approvals", columns)
    bind = op.get_bind()
    approvals = sa.table(
        "gateway_approvals",
        sa.column("id", sa.String),
        sa.column("summary", sa.LargeBinary),
        sa.column("executor", sa.String),
        sa.column("action_type", sa.String),
        sa.column("resource", sa.String),
    )
    reasons = sa.table(
        "gateway_approval_reasons",
        sa.column("approval_id", sa.String),
        sa.column("code", sa.String),
    )
    for row in bind.execute(sa.select(approvals.c.id, approvals.c.summary)).all():
        summary = orjson.loads(row.summary)
        bind.execute(
            approvals.update()
            .where(approvals.c.id == row.id)
            .values(
                executor=summary["executor"],
                action_type=summary["action_type"],
                resource=summary["resource"],
            )
        )
        codes = sorted({reason["code"] for reason in summary["reasons"]})
        if codes:
            bind.execute(reasons.insert(), [{"approval_id": row.id, "code": c} for c in codes])
