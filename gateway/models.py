"""The gateway's own tables (SQLModel). The ledger is the evidence; these are its indexes.

Every row here can be rebuilt from the ledger; they exist so that idempotency, lookups and the
approvers' inbox do not scan it.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, LargeBinary, Table, UniqueConstraint
from sqlalchemy.engine import Engine
from sqlmodel import Field, SQLModel

__all__ = [
    "ACTIONS",
    "APPROVALS",
    "AUTONOMY",
    "EVENTS",
    "INTENTS",
    "TOKENS",
    "VOTES",
    "create_gateway_tables",
]


class TokenRow(SQLModel, table=True):
    """A bearer token, stored as its SHA-256; the token itself is shown once, when made."""

    __tablename__ = "gateway_tokens"

    id: str = Field(primary_key=True, max_length=32)
    name: str = Field(unique=True, max_length=128)
    role: str = Field(max_length=64)
    workflow: str | None = Field(default=None, max_length=64)
    owner: str = Field(max_length=128)
    token_hash: bytes = Field(sa_column=Column(LargeBinary, unique=True, nullable=False))
    created_at: str
    revoked_at: str | None = None


class ActionRow(SQLModel, table=True):
    """A proposed action, its verdict and the response its proposer got (for idempotency)."""

    __tablename__ = "gateway_actions"
    __table_args__ = (UniqueConstraint("owner", "idempotency_key", name="uq_action_idempotency"),)

    id: str = Field(primary_key=True, max_length=40)
    owner: str = Field(max_length=128)
    idempotency_key: str = Field(max_length=128)
    request_digest: str = Field(max_length=64)
    executor: str = Field(max_length=128)
    workflow: str = Field(max_length=64, index=True)
    case_type: str = Field(max_length=128)
    action_type: str = Field(max_length=128)
    verdict: str = Field(max_length=16)
    status: str = Field(max_length=16)
    proposal_seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    decision_seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    decision_leaf: str = Field(max_length=64)
    # The verdict as answered, less its ledger block (rebuilt from the columns above).
    response: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    created_at: str


class EventRow(SQLModel, table=True):
    """Which ledger entries concern which action: the action's timeline without a scan."""

    __tablename__ = "gateway_events"
    __table_args__ = (Index("ix_gateway_events_action", "action_id", "seq"),)

    seq: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    action_id: str = Field(max_length=40)
    kind: str = Field(max_length=32)
    time: str


class ApprovalRow(SQLModel, table=True):
    """A held action waiting for people: how many must approve, and until when."""

    __tablename__ = "gateway_approvals"

    id: str = Field(primary_key=True, max_length=40)
    action_id: str = Field(max_length=40, index=True)
    workflow: str = Field(max_length=64, index=True)
    case_type: str = Field(max_length=128)
    status: str = Field(max_length=16, index=True)  # pending, approved, rejected, expired
    quorum: int
    expires_at: str
    created_at: str
    bundle_digest: str = Field(max_length=64)
    proposal_digest: str = Field(max_length=64)
    proposer_owner: str = Field(max_length=128)
    # What the inbox lists without opening the ledger: executor, amount, confidence, reasons,
    # recommendation (JSON).
    summary: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    closed_at: str | None = None
    closed_reason: str | None = None


class VoteRow(SQLModel, table=True):
    """One person's vote on a held action; a second vote by the same owner counts once."""

    __tablename__ = "gateway_votes"

    approval_id: str = Field(primary_key=True, max_length=40)
    voter_owner: str = Field(primary_key=True, max_length=128)
    voter: str = Field(max_length=128)
    decision: str = Field(max_length=8)  # approve, reject
    reason: str
    seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    time: str


class IntentRow(SQLModel, table=True):
    """An execution intent (the outbox): persisted before dispatch, so a restart resumes it."""

    __tablename__ = "gateway_intents"

    action_id: str = Field(primary_key=True, max_length=40)
    adapter: str = Field(max_length=32)
    target: str | None = Field(default=None, max_length=2048)
    # pending → dispatching → succeeded | failed; callback intents wait in awaiting_outcome.
    status: str = Field(max_length=24, index=True)
    attempts: int = 0
    next_attempt_at: str
    lease_until: str | None = None
    last_error: str | None = None
    created_at: str
    updated_at: str


class AutonomyRow(SQLModel, table=True):
    """A case type's autonomy level when it differs from the bundle's initial level."""

    __tablename__ = "gateway_autonomy"

    workflow: str = Field(primary_key=True, max_length=64)
    case_type: str = Field(primary_key=True, max_length=128)
    level: int
    reason: str
    changed_at: str
    seq: int = Field(sa_column=Column(BigInteger, nullable=False))


def _table(model: type[SQLModel]) -> Table:
    table = model.__table__  # type: ignore[attr-defined]
    assert isinstance(table, Table)
    return table


VOTES = _table(VoteRow)
INTENTS = _table(IntentRow)
TOKENS = _table(TokenRow)
ACTIONS = _table(ActionRow)
EVENTS = _table(EventRow)
APPROVALS = _table(ApprovalRow)
AUTONOMY = _table(AutonomyRow)
GATEWAY_TABLES = (TOKENS, ACTIONS, EVENTS, APPROVALS, VOTES, INTENTS, AUTONOMY)


def create_gateway_tables(engine: Engine) -> None:
    """Create the gateway's tables where they do not exist yet."""
    SQLModel.metadata.create_all(engine, tables=list(GATEWAY_TABLES))
