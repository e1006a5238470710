"""The gateway's own tables (SQLModel). The ledger is the evidence; these are its indexes.

Every row here can be rebuilt from the ledger; they exist so that idempotency, lookups and the
approvers' inbox do not scan it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Engine
from sqlmodel import Field, SQLModel

__all__ = [
    "ACTIONS",
    "APPROVALS",
    "AUDITS",
    "AUTONOMY",
    "AUTONOMY_CHANGES",
    "BUNDLES",
    "EVENTS",
    "EXCEPTIONS",
    "FIGURES",
    "INTENTS",
    "POLICY_SLOTS",
    "PROMOTIONS",
    "PROMOTION_VOTES",
    "SHADOW_DISAGREEMENTS",
    "TOKENS",
    "UI_SESSIONS",
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


class UiSessionRow(SQLModel, table=True):
    """A session signed in to the inbox (``gateway.web.session``), stored as the SHA-256 of the
    random id its cookie holds. Signing out deletes it; so does the first sign-in after it is
    too old."""

    __tablename__ = "gateway_ui_sessions"

    id: str = Field(primary_key=True, max_length=64)
    token_id: str = Field(max_length=32)
    created_at: str = Field(index=True)


class ActionRow(SQLModel, table=True):
    """A proposed action, its verdict and the response its proposer got (for idempotency)."""

    __tablename__ = "gateway_actions"
    __table_args__ = (
        UniqueConstraint("owner", "idempotency_key", name="uq_action_idempotency"),
        # The history signals (gateway.decision.history): has this executor proposed this
        # action type, has anyone named this resource, how many proposals in the last hour.
        Index("ix_gateway_actions_executor_type", "executor", "workflow", "action_type"),
        Index("ix_gateway_actions_executor_time", "executor", "created_at"),
        Index("ix_gateway_actions_resource", "workflow", "resource_digest"),
    )

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
    # SHA-256 (hex) of the proposal's resource: fixed width to index, and no copy of it in clear.
    resource_digest: str | None = Field(default=None, max_length=64)


class EventRow(SQLModel, table=True):
    """Which ledger entries concern which action: the action's timeline without a scan."""

    __tablename__ = "gateway_events"
    __table_args__ = (Index("ix_gateway_events_action", "action_id", "seq"),)

    seq: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    action_id: str = Field(max_length=40)
    kind: str = Field(max_length=32)
    time: str


def _text(length: int | None = None) -> Any:
    """A text column that defaults to the empty string in the database (rows of before it)."""
    return Field(
        default="", sa_column=Column(String(length), nullable=False, server_default=text("''"))
    )


class ApprovalRow(SQLModel, table=True):
    """A held action waiting for people: how many must approve, and until when."""

    __tablename__ = "gateway_approvals"
    # The inbox (``gateway.approvals.inbox``): a page by status, newest first or by expiry; the
    # counts per filter value read the last index alone, which holds every column they need.
    __table_args__ = (
        Index("ix_gateway_approvals_status_created", "status", "created_at", "id"),
        Index("ix_gateway_approvals_status_expires", "status", "expires_at", "id"),
        Index(
            "ix_gateway_approvals_inbox",
            "status",
            "workflow",
            "action_type",
            "case_type",
            "executor",
            "reason_codes",
            "created_at",
            "proposer_owner",
            "resource",
        ),
    )

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
    # The summary's executor, action type, resource and reason codes again, as columns to
    # filter, search and count by; the codes sorted, each between spaces (`` a b ``).
    executor: str = _text(128)
    action_type: str = _text(128)
    resource: str = _text(256)
    reason_codes: str = _text()


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


def _flag() -> Any:
    """A 0/1 column that defaults to 0 in the database."""
    return Field(default=0, sa_column=Column(Integer, nullable=False, server_default=text("0")))


class FigureRow(SQLModel, table=True):
    """One decided action as the measured figures count it: flags that the events set (the
    decision, a vote closing its approval, expiry, the outcome, an audit finding, a
    correction), each written in the ledger transaction of its event. The window of a case type
    is its latest rows at the level in force since the level last changed."""

    __tablename__ = "gateway_figures"
    __table_args__ = (Index("ix_gateway_figures_window", "workflow", "case_type", "seq"),)

    action_id: str = Field(primary_key=True, max_length=40)
    workflow: str = Field(max_length=64)
    case_type: str = Field(max_length=128)
    seq: int = Field(sa_column=Column(BigInteger, nullable=False))  # the decision entry
    decided_at: str
    level: int
    verdict: str = Field(max_length=16)
    recommendation: str = Field(max_length=16)
    # Flags, 0 or 1, defaulting to 0 in the database: a decision inserts only what it knows.
    held: int = _flag()
    approved: int = _flag()  # its approval closed approved
    expired: int = _flag()  # its approval expired
    reviewed: int = _flag()  # a person judged what the gateway recommended (a vote, an audit)
    agreed: int = _flag()  # ...and agreed with it
    overridden: int = _flag()  # ...and did otherwise
    executed: int = _flag()  # it has an outcome (succeeded or failed)
    failed: int = _flag()
    audited: int = _flag()
    audit_incorrect: int = _flag()
    corrected: int = _flag()
    excepted: int = _flag()  # a failure of it was handed to people (an exception)
    exception_handled: int = _flag()  # ...and they retried it or marked it handled
    warned: int = _flag()  # the policy warned (its warn rules) when deciding it
    # params.amount as proposed (a decimal string), for the case type's amount history.
    amount: str | None = Field(default=None, max_length=64)


class ExceptionRow(SQLModel, table=True):
    """A failed execution handed to people (``gateway.execution.exceptions``): what was
    attempted and what failed, and what they chose (retry, or handled with a note)."""

    __tablename__ = "gateway_exceptions"
    __table_args__ = (Index("ix_gateway_exceptions_status", "status", "created_at", "id"),)

    id: str = Field(primary_key=True, max_length=40)
    action_id: str = Field(max_length=40, index=True)
    workflow: str = Field(max_length=64)
    case_type: str = Field(max_length=128)
    action_type: str = Field(max_length=128)
    executor: str = Field(max_length=128)
    proposer_owner: str = Field(max_length=128)
    adapter: str = Field(max_length=32)
    cause: str = Field(max_length=32)  # dispatch_failed, outcome_failed
    status: str = Field(max_length=16)  # open, retried, handled
    # JSON: [{"attempt", "error"}] in the order they were made.
    attempts: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    seq: int = Field(sa_column=Column(BigInteger, nullable=False))  # the exception entry
    created_at: str
    closed_by: str | None = Field(default=None, max_length=128)
    note: str | None = None
    closed_seq: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    closed_at: str | None = None


class AuditRow(SQLModel, table=True):
    """An executed action drawn for post-hoc audit, and the auditor's finding."""

    __tablename__ = "gateway_audits"

    id: str = Field(primary_key=True, max_length=40)
    action_id: str = Field(max_length=40, unique=True)
    workflow: str = Field(max_length=64, index=True)
    case_type: str = Field(max_length=128)
    level: int
    rate_bp: int
    status: str = Field(max_length=16, index=True)  # pending, correct, incorrect
    created_at: str
    decision_seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    proposer_owner: str = Field(max_length=128)
    # What the audit queue lists without opening the ledger (JSON).
    summary: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    auditor: str | None = Field(default=None, max_length=128)
    note: str | None = None
    finding_seq: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    closed_at: str | None = None


class AutonomyChangeRow(SQLModel, table=True):
    """Every change of a case type's level (promotion, demotion, set by hand), as recorded."""

    __tablename__ = "gateway_autonomy_changes"
    __table_args__ = (Index("ix_gateway_autonomy_changes_case", "workflow", "case_type", "seq"),)

    seq: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    workflow: str = Field(max_length=64)
    case_type: str = Field(max_length=128)
    event: str = Field(max_length=16)  # promotion, demotion, set
    from_level: int
    to_level: int
    actor: str = Field(max_length=128)
    reason: str
    time: str
    figures: bytes = Field(sa_column=Column(LargeBinary, nullable=False))  # JSON


class PromotionRow(SQLModel, table=True):
    """A promotion the gateway proposed, waiting for governors."""

    __tablename__ = "gateway_promotions"

    id: str = Field(primary_key=True, max_length=40)
    workflow: str = Field(max_length=64, index=True)
    case_type: str = Field(max_length=128)
    from_level: int
    to_level: int
    status: str = Field(max_length=16, index=True)  # pending, approved, rejected, superseded
    quorum: int
    seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    created_at: str
    figures: bytes = Field(sa_column=Column(LargeBinary, nullable=False))  # JSON
    criteria: bytes = Field(sa_column=Column(LargeBinary, nullable=False))  # JSON
    closed_at: str | None = None
    closed_reason: str | None = None


class PromotionVoteRow(SQLModel, table=True):
    """One governor's vote on a promotion; a second vote by the same owner counts once."""

    __tablename__ = "gateway_promotion_votes"

    promotion_id: str = Field(primary_key=True, max_length=40)
    voter_owner: str = Field(primary_key=True, max_length=128)
    voter: str = Field(max_length=128)
    decision: str = Field(max_length=8)  # approve, reject
    reason: str
    seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    time: str


class BundleRow(SQLModel, table=True):
    """A policy bundle's files, by digest: what every gateway process loads when it becomes
    active (or shadows the active one). The ledger's ``policy`` entries list the files' hashes."""

    __tablename__ = "gateway_bundles"

    digest: str = Field(primary_key=True, max_length=64)
    files: bytes = Field(sa_column=Column(LargeBinary, nullable=False))  # JSON: path → text
    stored_at: str


class PolicySlotRow(SQLModel, table=True):
    """Which bundle is ``active`` and which one runs in ``shadow`` beside it (digest None: no
    shadow). ``seq`` is the ``policy`` entry that set it: processes poll it to follow."""

    __tablename__ = "gateway_policy_slots"

    slot: str = Field(primary_key=True, max_length=16)
    digest: str | None = Field(default=None, max_length=64)
    seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    changed_at: str
    changed_by: str = Field(max_length=128)
    reason: str


class ShadowDisagreementRow(SQLModel, table=True):
    """A proposal the shadow bundle decided otherwise than the active one (or failed on)."""

    __tablename__ = "gateway_shadow_disagreements"
    __table_args__ = (Index("ix_gateway_shadow_digest", "shadow_digest", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    shadow_digest: str = Field(max_length=64)
    active_digest: str = Field(max_length=64)
    action_id: str = Field(max_length=40)
    decision_seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    decided_at: str
    workflow: str = Field(max_length=64)
    case_type: str = Field(max_length=128)
    action_type: str = Field(max_length=128)
    executor: str = Field(max_length=128)
    active_verdict: str = Field(max_length=16)
    shadow_verdict: str = Field(max_length=16)  # execute, hold, reject, refused, error
    verdict_changed: bool
    # JSON: the active reasons, the shadow's reasons (and error), the proposal as recorded.
    detail: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


def _table(model: type[SQLModel]) -> Table:
    table = model.__table__  # type: ignore[attr-defined]
    assert isinstance(table, Table)
    return table


VOTES = _table(VoteRow)
INTENTS = _table(IntentRow)
TOKENS = _table(TokenRow)
UI_SESSIONS = _table(UiSessionRow)
ACTIONS = _table(ActionRow)
EVENTS = _table(EventRow)
APPROVALS = _table(ApprovalRow)
AUTONOMY = _table(AutonomyRow)
FIGURES = _table(FigureRow)
EXCEPTIONS = _table(ExceptionRow)
AUDITS = _table(AuditRow)
AUTONOMY_CHANGES = _table(AutonomyChangeRow)
PROMOTIONS = _table(PromotionRow)
PROMOTION_VOTES = _table(PromotionVoteRow)
BUNDLES = _table(BundleRow)
POLICY_SLOTS = _table(PolicySlotRow)
SHADOW_DISAGREEMENTS = _table(ShadowDisagreementRow)
GATEWAY_TABLES = (
    TOKENS,
    UI_SESSIONS,
    ACTIONS,
    EVENTS,
    APPROVALS,
    VOTES,
    INTENTS,
    AUTONOMY,
    FIGURES,
    EXCEPTIONS,
    AUDITS,
    AUTONOMY_CHANGES,
    PROMOTIONS,
    PROMOTION_VOTES,
    BUNDLES,
    POLICY_SLOTS,
    SHADOW_DISAGREEMENTS,
)


def create_gateway_tables(engine: Engine) -> None:
    """Create the gateway's tables where they do not exist yet."""
    SQLModel.metadata.create_all(engine, tables=list(GATEWAY_TABLES))
