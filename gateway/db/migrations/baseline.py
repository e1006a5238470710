"""The schema of revision 0001, frozen: every table as ``create_all`` made it before migrations.

Revision 0001 creates these tables, and a database made before migrations existed (the tables
are there, the version table is not) is compared with them before it is stamped at 0001. They
are a copy, not the models: a revision must make the same tables whatever the models say later,
and later changes are later revisions. The ledger's tables are copied from ``ledger.models``
too (the standalone ledger keeps making its own with ``ledger.database.create_tables``).
"""

from __future__ import annotations

import sqlalchemy as sa

__all__ = ["baseline_metadata"]

# As ledger.models.SEQ: INTEGER PRIMARY KEY on SQLite keeps the ledger's rows in the rowid tree.
SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def baseline_metadata() -> sa.MetaData:
    """The tables of revision 0001, in a metadata of their own (in the search-path schema)."""
    metadata = sa.MetaData()
    sa.Table(
        "ledger_entries",
        metadata,
        sa.Column("seq", SEQ, primary_key=True, autoincrement=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("leaf_hash", sa.LargeBinary(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("nodes", sa.LargeBinary(), nullable=False),
    )
    sa.Table(
        "ledger_checkpoints",
        metadata,
        sa.Column("size", SEQ, primary_key=True, autoincrement=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("root_hash", sa.LargeBinary(), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("signed_at", sa.String(), nullable=False),
    )
    sa.Table(
        "ledger_keys",
        metadata,
        sa.Column("from_size", SEQ, primary_key=True, autoincrement=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("vkey", sa.Text(), nullable=False),
    )
    sa.Table(
        "ledger_sealed",
        metadata,
        sa.Column("seq", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("path", sa.String(256), primary_key=True),
        sa.Column("subject", sa.String(256), nullable=False, index=True),
        sa.Column("salt", sa.LargeBinary(), nullable=True),
        sa.Column("value", sa.LargeBinary(), nullable=True),
        sa.Column("erased_by", sa.BigInteger(), nullable=True),
    )
    sa.Table(
        "gateway_tokens",
        metadata,
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("role", sa.String(64), nullable=False),
        sa.Column("workflow", sa.String(64), nullable=True),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("token_hash", sa.LargeBinary(), nullable=False, unique=True),
        sa.Column("created_at", sa.String(), nullable=False),
        sa.Column("revoked_at", sa.String(), nullable=True),
    )
    sa.Table(
        "gateway_actions",
        metadata,
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("idempotency_key", sa.String(128), nullable=False),
        sa.Column("request_digest", sa.String(64), nullable=False),
        sa.Column("executor", sa.String(128), nullable=False),
        sa.Column("workflow", sa.String(64), nullable=False, index=True),
        sa.Column("case_type", sa.String(128), nullable=False),
        sa.Column("action_type", sa.String(128), nullable=False),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("proposal_seq", sa.BigInteger(), nullable=False),
        sa.Column("decision_seq", sa.BigInteger(), nullable=False),
        sa.Column("decision_leaf", sa.String(64), nullable=False),
        sa.Column("response", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.String(), nullable=False),
        sa.UniqueConstraint("owner", "idempotency_key", name="uq_action_idempotency"),
    )
    sa.Table(
        "gateway_events",
        metadata,
        sa.Column("seq", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("action_id", sa.String(40), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("time", sa.String(), nullable=False),
        sa.Index("ix_gateway_events_action", "action_id", "seq"),
    )
    sa.Table(
        "gateway_approvals",
        metadata,
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("action_id", sa.String(40), nullable=False, index=True),
        sa.Column("workflow", sa.String(64), nullable=False, index=True),
        sa.Column("case_type", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("quorum", sa.Integer(), nullable=False),
        sa.Column("expires_at", sa.String(), nullable=False),
        sa.Column("created_at", sa.String(), nullable=False),
        sa.Column("bundle_digest", sa.String(64), nullable=False),
        sa.Column("proposal_digest", sa.String(64), nullable=False),
        sa.Column("proposer_owner", sa.String(128), nullable=False),
        sa.Column("summary", sa.LargeBinary(), nullable=False),
        sa.Column("closed_at", sa.String(), nullable=True),
        sa.Column("closed_reason", sa.String(), nullable=True),
    )
    sa.Table(
        "gateway_votes",
        metadata,
        sa.Column("approval_id", sa.String(40), primary_key=True),
        sa.Column("voter_owner", sa.String(128), primary_key=True),
        sa.Column("voter", sa.String(128), nullable=False),
        sa.Column("decision", sa.String(8), nullable=False),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("time", sa.String(), nullable=False),
    )
    sa.Table(
        "gateway_intents",
        metadata,
        sa.Column("action_id", sa.String(40), primary_key=True),
        sa.Column("adapter", sa.String(32), nullable=False),
        sa.Column("target", sa.String(2048), nullable=True),
        sa.Column("status", sa.String(24), nullable=False, index=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.String(), nullable=False),
        sa.Column("lease_until", sa.String(), nullable=True),
        sa.Column("last_error", sa.String(), nullable=True),
        sa.Column("created_at", sa.String(), nullable=False),
        sa.Column("updated_at", sa.String(), nullable=False),
    )
    sa.Table(
        "gateway_autonomy",
        metadata,
        sa.Column("workflow", sa.String(64), primary_key=True),
        sa.Column("case_type", sa.String(128), primary_key=True),
        sa.Column("level", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("changed_at", sa.String(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
    )
    sa.Table(
        "gateway_figures",
        metadata,
        sa.Column("action_id", sa.String(40), primary_key=True),
        sa.Column("workflow", sa.String(64), nullable=False),
        sa.Column("case_type", sa.String(128), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("decided_at", sa.String(), nullable=False),
        sa.Column("level", sa.Integer(), nullable=False),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("recommendation", sa.String(16), nullable=False),
        sa.Column("held", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("approved", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("expired", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("reviewed", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("agreed", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("overridden", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("executed", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("failed", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("audited", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("audit_incorrect", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("corrected", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Index("ix_gateway_figures_window", "workflow", "case_type", "seq"),
    )
    sa.Table(
        "gateway_audits",
        metadata,
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("action_id", sa.String(40), nullable=False, unique=True),
        sa.Column("workflow", sa.String(64), nullable=False, index=True),
        sa.Column("case_type", sa.String(128), nullable=False),
        sa.Column("level", sa.Integer(), nullable=False),
        sa.Column("rate_bp", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("created_at", sa.String(), nullable=False),
        sa.Column("decision_seq", sa.BigInteger(), nullable=False),
        sa.Column("proposer_owner", sa.String(128), nullable=False),
        sa.Column("summary", sa.LargeBinary(), nullable=False),
        sa.Column("auditor", sa.String(128), nullable=True),
        sa.Column("note", sa.String(), nullable=True),
        sa.Column("finding_seq", sa.BigInteger(), nullable=True),
        sa.Column("closed_at", sa.String(), nullable=True),
    )
    sa.Table(
        "gateway_autonomy_changes",
        metadata,
        sa.Column("seq", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("workflow", sa.String(64), nullable=False),
        sa.Column("case_type", sa.String(128), nullable=False),
        sa.Column("event", sa.String(16), nullable=False),
        sa.Column("from_level", sa.Integer(), nullable=False),
        sa.Column("to_level", sa.Integer(), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("time", sa.String(), nullable=False),
        sa.Column("figures", sa.LargeBinary(), nullable=False),
        sa.Index("ix_gateway_autonomy_changes_case", "workflow", "case_type", "seq"),
    )
    sa.Table(
        "gateway_promotions",
        metadata,
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("workflow", sa.String(64), nullable=False, index=True),
        sa.Column("case_type", sa.String(128), nullable=False),
        sa.Column("from_level", sa.Integer(), nullable=False),
        sa.Column("to_level", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("quorum", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.String(), nullable=False),
        sa.Column("figures", sa.LargeBinary(), nullable=False),
        sa.Column("criteria", sa.LargeBinary(), nullable=False),
        sa.Column("closed_at", sa.String(), nullable=True),
        sa.Column("closed_reason", sa.String(), nullable=True),
    )
    sa.Table(
        "gateway_promotion_votes",
        metadata,
        sa.Column("promotion_id", sa.String(40), primary_key=True),
        sa.Column("voter_owner", sa.String(128), primary_key=True),
        sa.Column("voter", sa.String(128), nullable=False),
        sa.Column("decision", sa.String(8), nullable=False),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("time", sa.String(), nullable=False),
    )
    sa.Table(
        "gateway_bundles",
        metadata,
        sa.Column("digest", sa.String(64), primary_key=True),
        sa.Column("files", sa.LargeBinary(), nullable=False),
        sa.Column("stored_at", sa.String(), nullable=False),
    )
    sa.Table(
        "gateway_policy_slots",
        metadata,
        sa.Column("slot", sa.String(16), primary_key=True),
        sa.Column("digest", sa.String(64), nullable=True),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("changed_at", sa.String(), nullable=False),
        sa.Column("changed_by", sa.String(128), nullable=False),
        sa.Column("reason", sa.String(), nullable=False),
    )
    sa.Table(
        "gateway_shadow_disagreements",
        metadata,
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("shadow_digest", sa.String(64), nullable=False),
        sa.Column("active_digest", sa.String(64), nullable=False),
        sa.Column("action_id", sa.String(40), nullable=False),
        sa.Column("decision_seq", sa.BigInteger(), nullable=False),
        sa.Column("decided_at", sa.String(), nullable=False),
        sa.Column("workflow", sa.String(64), nullable=False),
        sa.Column("case_type", sa.String(128), nullable=False),
        sa.Column("action_type", sa.String(128), nullable=False),
        sa.Column("executor", sa.String(128), nullable=False),
        sa.Column("active_verdict", sa.String(16), nullable=False),
        sa.Column("shadow_verdict", sa.String(16), nullable=False),
        sa.Column("verdict_changed", sa.Boolean(), nullable=False),
        sa.Column("detail", sa.LargeBinary(), nullable=False),
        sa.Index("ix_gateway_shadow_digest", "shadow_digest", "id"),
    )
    return metadata
