"""Sealed values name their data subject by a keyed digest, never in clear.

Revision ID: 0003
Revises: 0002

``ledger_sealed.subject`` (the data subject's id in clear, indexed) becomes
``subject_digest`` (HMAC-SHA256 under the ledger's subject key, indexed) and ``subject_key_id``
(which key). The gateway has never sealed a value, so the table is empty and is made again; a
table that holds rows is refused, since their digests cannot be computed here without the key.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Make ``ledger_sealed`` again with the digest columns, refusing if it holds rows."""
    if op.get_bind().execute(sa.text("SELECT 1 FROM ledger_sealed LIMIT 1")).first():
        raise RuntimeError(
            "ledger_sealed holds sealed values named by their data subject in clear; this "
            "version names them by a keyed digest and cannot convert them without the subject "
            "key: erase them with the previous version first"
        )
    op.drop_index("ix_ledger_sealed_subject", table_name="ledger_sealed")
    op.drop_table("ledger_sealed")
    op.create_table(
        "ledger_sealed",
        sa.Column("seq", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("path", sa.String(256), primary_key=True),
        sa.Column("subject_digest", sa.LargeBinary(), nullable=False),
        sa.Column("subject_key_id", sa.LargeBinary(), nullable=False),
        sa.Column("salt", sa.LargeBinary(), nullable=True),
        sa.Column("value", sa.LargeBinary(), nullable=True),
        sa.Column("erased_by", sa.BigInteger(), nullable=True),
    )
    op.create_index("ix_ledger_sealed_subject_digest", "ledger_sealed", ["subject_digest"])
