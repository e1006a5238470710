"""The HTTP API's models, shared by the server and the SDK client (``gateway.client``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, StringConstraints

__all__ = [
    "ActionView",
    "ApprovalRef",
    "ApprovalView",
    "AutonomyTrace",
    "CasbinTrace",
    "CheckpointView",
    "ConsistencyProofView",
    "EntryView",
    "ExecutionRef",
    "ExecutionView",
    "InclusionProofView",
    "LedgerRef",
    "OutcomeReport",
    "Problem",
    "ProblemField",
    "Proposal",
    "Reason",
    "RegoTrace",
    "Trace",
    "Verdict",
    "VerdictName",
    "VoteRequest",
    "VoteView",
]

Name = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,63}$")]
Dotted = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_.-]{0,127}$")]
VerdictName = Literal["execute", "hold", "reject"]


class Proposal(BaseModel):
    """An action an executor proposes. Money and other decimals go in strings ("20.00")."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "workflow": "parking",
                    "action_type": "booking.create",
                    "resource": "lot-7/space-42",
                    "params": {"customer": "C-1001", "start": "2026-12-01T08:00:00Z"},
                    "case_type": "booking.create",
                    "confidence": 0.95,
                    "context": {"channel": "email"},
                    "idempotency_key": "booking-C-1001-20261201",
                }
            ]
        },
    )

    workflow: Name = Field(description="The workflow (Casbin domain), e.g. parking, claims.")
    action_type: Dotted = Field(description="What the executor wants to do, e.g. refund.issue.")
    resource: Annotated[str, StringConstraints(min_length=1, max_length=256)] = Field(
        description="What it acts on, e.g. booking/B-1."
    )
    params: dict[str, JsonValue] = Field(
        default_factory=dict, description="The action's parameters; amounts as decimal strings."
    )
    case_type: Dotted = Field(description="The unit of autonomy, e.g. refund.issue.")
    confidence: Annotated[float, Field(ge=0.0, le=1.0, strict=True)] | None = Field(
        default=None, description="The executor's confidence, 0..1."
    )
    context: dict[str, JsonValue] = Field(
        default_factory=dict, description="Anything else the policy may look at."
    )
    idempotency_key: Annotated[
        str, StringConstraints(min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$")
    ] = Field(description="The same key and body give the same verdict and no new entries.")


class Reason(BaseModel):
    """Why a verdict is what it is."""

    code: str
    message: str
    source: Literal["casbin", "rego", "gateway"]


class CasbinTrace(BaseModel):
    """Casbin's request, answer and the policy line that allowed it."""

    request: list[str]
    allowed: bool
    matched: list[str] | str


class RegoTrace(BaseModel):
    """The Rego query, a digest of its input, and what it returned."""

    engine: str
    version: str
    query: list[str]
    input_digest: str
    output: dict[str, Any] | None


class AutonomyTrace(BaseModel):
    """The autonomy level the action was decided at, and where that level came from."""

    level: int
    name: str
    source: str


class Trace(BaseModel):
    """Everything needed to see, and replay, how a verdict was reached."""

    casbin: CasbinTrace
    rego: RegoTrace
    autonomy: AutonomyTrace
    bundle_digest: str
    decided_at: str
    recommendation: VerdictName


class LedgerRef(BaseModel):
    """Where the proposal and the decision stand in the ledger."""

    proposal_seq: int
    decision_seq: int
    leaf_hash: str = Field(description="The decision entry's leaf hash (hex).")


class ApprovalRef(BaseModel):
    """The approval a held action waits for."""

    id: str
    quorum: int
    expires_at: str


class ExecutionRef(BaseModel):
    """Who carries the action out if it is allowed: a webhook, or the executor itself
    (callback: it reports the outcome with POST /v1/actions/{id}/outcome)."""

    adapter: str


class Verdict(BaseModel):
    """The answer to a proposal."""

    action_id: str
    verdict: VerdictName
    reasons: list[Reason]
    trace: Trace
    ledger: LedgerRef
    approval: ApprovalRef | None = None
    execution: ExecutionRef | None = Field(
        default=None, description="For execute and hold: how the action is carried out."
    )


class ExecutionView(BaseModel):
    """Where the carrying out of an allowed action stands."""

    adapter: str
    status: str = Field(
        description="pending, dispatching, awaiting_outcome (callback), succeeded or failed"
    )
    attempts: int


class ActionView(BaseModel):
    """A proposed action as it stands now, with its ledger timeline."""

    action_id: str
    status: str
    verdict: VerdictName
    workflow: str
    case_type: str
    action_type: str
    executor: str
    created_at: str
    decision: Verdict
    execution: ExecutionView | None = None
    timeline: list[dict[str, Any]]


class VoteRequest(BaseModel):
    """A person's decision on a held action. Rejecting needs a reason."""

    model_config = ConfigDict(extra="forbid")

    decision: Literal["approve", "reject"]
    reason: Annotated[str, StringConstraints(max_length=2000)] = ""


class VoteView(BaseModel):
    """One vote, as recorded."""

    voter: str
    decision: Literal["approve", "reject"]
    reason: str
    seq: int
    time: str


class ApprovalView(BaseModel):
    """A held action's approval: how many have approved, by when, and what it is about."""

    id: str
    action_id: str
    workflow: str
    case_type: str
    status: Literal["pending", "approved", "rejected", "expired", "superseded"]
    quorum: int
    approvals: int
    expires_at: str
    created_at: str
    executor: str
    action_type: str
    resource: str
    amount: str | None
    confidence: str | None
    reasons: list[Reason]
    recommendation: VerdictName
    votes: list[VoteView]
    closed_reason: str | None = None


class OutcomeReport(BaseModel):
    """What an executor reports after carrying out an action itself (the callback adapter)."""

    model_config = ConfigDict(extra="forbid")

    status: Literal["succeeded", "failed"]
    details: dict[str, JsonValue] = Field(default_factory=dict)


class EntryView(BaseModel):
    """One ledger entry as stored, with its leaf hash."""

    seq: int
    leaf_hash: str
    entry: dict[str, Any]


class CheckpointView(BaseModel):
    """A signed tree head."""

    size: int
    root_hash: str
    note: str


class InclusionProofView(BaseModel):
    """RFC 9162 inclusion proof of one entry in a tree."""

    seq: int
    tree_size: int
    leaf_hash: str
    root_hash: str
    proof: list[str]
    checkpoint: CheckpointView | None = None


class ConsistencyProofView(BaseModel):
    """RFC 9162 consistency proof between two tree sizes."""

    size1: int
    size2: int
    root1: str
    root2: str
    proof: list[str]


class ProblemField(BaseModel):
    """One field that was wrong, and what was wrong with it."""

    field: str
    message: str


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    errors: list[ProblemField] | None = None
