"""What the inbox filters, searches, counts and sorts by, as columns and indexes.

Revision ID: 0005
Revises: 0004

``gateway_approvals`` gains ``executor``, ``action_type``, ``resource`` and ``reason_codes``
(copies of its JSON summary's, to filter, search and count by in SQL) and three indexes: by
status with time, with expiry, and one that holds every column the counts per filter read.
Rows of before this revision are filled from their summaries.
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
    """Add the columns and the indexes; fill the columns from the summaries."""
    for name, length in (
        ("executor", 128),
        ("action_type", 128),
        ("resource", 256),
        ("reason_codes", None),
    ):
        op.add_column(
            "gateway_approvals",
            sa.Column(name, sa.String(length), nullable=False, server_default=sa.text("''")),
        )
    approvals = sa.table(
        "gateway_approvals",
        sa.column("id", sa.String),
        sa.column("summary", sa.LargeBinary),
        sa.column("executor", sa.String),
        sa.column("action_type", sa.String),
        sa.column("resource", sa.String),
        sa.column("reason_codes", sa.String),
    )
    bind = op.get_bind()
    for row in bind.execute(sa.select(approvals.c.id, approvals.c.summary)).all():
        summary = orjson.loads(row.summary)
        codes = sorted({reason["code"] for reason in summary["reasons"]})
        bind.execute(
            approvals.update()
            .where(approvals.c.id == row.id)
            .values(
                executor=summary["executor"],
                action_type=summary["action_type"],
                resource=summary["resource"],
                reason_codes=" " + " ".join(codes) + " ",
            )
        )
    op.create_index(
        "ix_gateway_approvals_status_created", "gateway_approvals", ["status", "created_at", "id"]
    )
    op.create_index(
        "ix_gateway_approvals_status_expires", "gateway_approvals", ["status", "expires_at", "id"]
    )
    op.create_index(
        "ix_gateway_approvals_inbox",
        "gateway_approvals",
        [
            "status",
            "workflow",
            "action_type",
            "case_type",
            "executor",
            "reason_codes",
            "created_at",
            "proposer_owner",
            "resource",
        ],
    )
