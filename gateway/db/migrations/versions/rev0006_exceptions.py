"""Exceptions: failed executions handed to people.

Revision ID: 0006
Revises: 0005

A new table, ``gateway_exceptions`` (one row per failure handed over: what was attempted, what
failed, and what people chose), and two flags on ``gateway_figures``: ``excepted`` and
``exception_handled``. Failures of before this revision were only counted: they open no
exception.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the table and its indexes; add the flags."""
    op.create_table(
        "gateway_exceptions",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("action_id", sa.String(40), nullable=False),
        sa.Column("workflow", sa.String(64), nullable=False),
        sa.Column("case_type", sa.String(128), nullable=False),
        sa.Column("action_type", sa.String(128), nullable=False),
        sa.Column("executor", sa.String(128), nullable=False),
        sa.Column("proposer_owner", sa.String(128), nullable=False),
        sa.Column("adapter", sa.String(32), nullable=False),
        sa.Column("cause", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.LargeBinary(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.String(), nullable=False),
        sa.Column("closed_by", sa.String(128), nullable=True),
        sa.Column("note", sa.String(), nullable=True),
        sa.Column("closed_seq", sa.BigInteger(), nullable=True),
        sa.Column("closed_at", sa.String(), nullable=True),
    )
    op.create_index("ix_gateway_exceptions_action_id", "gateway_exceptions", ["action_id"])
    op.create_index(
        "ix_gateway_exceptions_status", "gateway_exceptions", ["status", "created_at", "id"]
    )
    for flag in ("excepted", "exception_handled"):
        op.add_column(
            "gateway_figures",
            sa.Column(flag, sa.Integer(), nullable=False, server_default=sa.text("0")),
        )
