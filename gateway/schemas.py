"""The HTTP API's models, shared by the server and the SDK client (``gateway.client``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, StringConstraints

__all__ = [
    "ActionView",
    "ActivationView",
    "ApprovalRef",
    "ApprovalView",
    "AuditView",
    "AutonomyChange",
    "AutonomyDetail",
    "AutonomyTrace",
    "AutonomyView",
    "BundleFileView",
    "BundleUpload",
    "CasbinTrace",
    "CheckpointView",
    "ConsistencyProofView",
    "CorrectionRequest",
    "CriteriaView",
    "DemotionView",
    "DisagreementView",
    "EntryView",
    "ErasedField",
    "ErasureRequest",
    "ErasureView",
    "ExceptionAttempt",
    "ExceptionDecision",
    "ExceptionView",
    "ExecutionRef",
    "ExecutionView",
    "Figures",
    "FindingRequest",
    "InclusionProofView",
    "LedgerRef",
    "LevelRequest",
    "OutcomeReport",
    "PolicyView",
    "Problem",
    "ProblemField",
    "PromotionView",
    "Proposal",
    "Reason",
    "RegoTrace",
    "ReplayRequest",
    "SeriesPoint",
    "ShadowView",
    "SideView",
    "SignatureView",
    "Trace",
    "Verdict",
    "VerdictName",
    "VoteRequest",
    "VoteView",
    "WindowView",
    "WithdrawalRequest",
    "WorkflowActionType",
    "WorkflowView",
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
                    "idempotency_key": "booking-20261201-0042",
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
    case_type: Dotted | None = Field(
        default=None,
        description="The unit of autonomy, e.g. refund.issue. The bundle decides it: leave it "
        "out, or name the one you expect (a claim the bundle does not list for the action "
        "type, or that its classification contradicts, is a 422).",
    )
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
    """The case type and autonomy level the action was decided at, and where each came from."""

    level: int
    name: str
    source: str
    case_type: str = Field(description="The unit of autonomy the bundle decided on.")
    case_type_source: Literal["classified", "only", "claimed"] = Field(
        description="classified: the workflow's case_type rule; only: the one case type the "
        "action type lists; claimed: the proposal named one of those listed."
    )


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
    warnings: list[Reason] = Field(
        default_factory=list,
        description="The policy's advisories (its warn rules): recorded and counted, never "
        "changing the verdict.",
    )
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


class ExceptionDecision(BaseModel):
    """A person's choice on an exception: dispatch it again (webhook actions), or close it as
    handled outside the gateway, saying how (the note is required then)."""

    model_config = ConfigDict(extra="forbid")

    decision: Literal["retry", "handled"]
    note: Annotated[str, StringConstraints(max_length=2000)] = ""


class ExceptionAttempt(BaseModel):
    """One attempt at carrying the action out, and what went wrong with it."""

    attempt: int | None
    error: str


class ExceptionView(BaseModel):
    """A failed execution handed to people: what was attempted, what failed, what they chose."""

    id: str
    action_id: str
    workflow: str
    case_type: str
    action_type: str
    executor: str
    adapter: str
    cause: Literal["dispatch_failed", "outcome_failed"]
    status: Literal["open", "retried", "handled"]
    retry_offered: bool
    attempts: list[ExceptionAttempt]
    seq: int
    created_at: str
    closed_by: str | None = None
    note: str | None = None
    closed_seq: int | None = None
    closed_at: str | None = None


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
    status: Literal["pending", "approved", "rejected", "expired", "superseded", "withdrawn"]
    quorum: int
    approvals: int
    expires_at: str
    created_at: str
    executor: str
    action_type: str
    resource: str
    amount: str | None
    currency: str | None = Field(
        default=None, description="The proposal's params.currency, if it gave one."
    )
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


class WithdrawalRequest(BaseModel):
    """The proposer takes back a held action nobody will carry out (its caller stopped
    waiting): why, for the ledger and the approvers."""

    model_config = ConfigDict(extra="forbid")

    reason: Annotated[str, StringConstraints(min_length=1, max_length=2000)] = Field(
        description="Why (recorded in the `withdrawal` ledger entry, shown on the approval)."
    )


class WorkflowActionType(BaseModel):
    """One action type a workflow lists, and whether the caller may propose it."""

    action_type: str
    case_types: list[str] = Field(description="The case types it may be (the bundle decides).")
    may_propose: bool = Field(
        description="Whether the caller's role may propose it here (Casbin `propose`)."
    )
    resource_argument: str | None = Field(
        description="For an MCP tool (`mandate mcp proxy`): the argument whose value is the "
        'proposal\'s resource (data.json `"mcp": {"resource": ...}`); null: the tool\'s name.'
    )


class WorkflowView(BaseModel):
    """What a workflow of the active bundle takes, as the caller sees it: the action types,
    the case types each may be, and which of them the caller's role may propose."""

    workflow: str
    description: str | None
    role: str = Field(description="The caller's role, which `may_propose` answers for.")
    bundle_digest: str
    action_types: list[WorkflowActionType]


class EntryView(BaseModel):
    """One ledger entry as stored, with its leaf hash."""

    seq: int
    leaf_hash: str
    entry: dict[str, Any]


class ErasureRequest(BaseModel):
    """A data subject whose personal data is to be erased (GDPR art. 17)."""

    model_config = ConfigDict(extra="forbid")

    data_subject: Annotated[str, StringConstraints(min_length=1, max_length=256)] = Field(
        description="The data subject's id, as proposals gave it in the field the bundle names "
        "(`personal_data.data_subject` in data.json, e.g. params.customer).",
        examples=["C-1001"],
    )
    reason: Annotated[str, StringConstraints(min_length=1, max_length=2000)] = Field(
        description="Why: the request's reference. Recorded in the erasure entry, so it must "
        "not name the data subject.",
        examples=["GDPR art. 17 request 88"],
    )


class ErasedField(BaseModel):
    """A sealed value that was erased: the entry that sealed it and its path in the body."""

    seq: int
    path: str


class ErasureView(BaseModel):
    """What an erasure erased. The ledger names the subject only by ``subject_digest``."""

    erasure_seq: int | None = Field(
        description="The erasure entry; none when nothing of the subject was left to erase "
        "(never recorded, or erased before)."
    )
    subject_digest: str = Field(
        description="HMAC-SHA256 of the id under the ledger's subject key: the erasure "
        "entry's subject."
    )
    erased: list[ErasedField]
    actions: list[str] = Field(description="The actions whose proposals held erased values.")


class CheckpointView(BaseModel):
    """A signed tree head."""

    size: int
    root_hash: str
    note: str


class CosignatureRequest(BaseModel):
    """A witness's cosignature of one of this ledger's checkpoints."""

    model_config = ConfigDict(extra="forbid")

    checkpoint_size: int = Field(
        ge=1, le=2**63 - 1, description="The size of the checkpoint it cosigns."
    )
    cosignature: str = Field(
        min_length=1,
        max_length=1000,
        description="The signature line, C2SP tlog-cosignature: `— <witness name> <base64>`.",
    )


class CosignatureView(BaseModel):
    """The cosignature kept, and the checkpoint that now carries it."""

    witness: str = Field(description="The witness's verifier key.")
    timestamp: int = Field(description="When the witness says it cosigned (Unix seconds).")
    checkpoint: CheckpointView


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


# -- earned autonomy and audits ---------------------------------------------------------------


class Figures(BaseModel):
    """Measured figures of a case type's window. Counts, and rates in basis points (1 % = 100;
    0 when the rate has no denominator yet)."""

    decisions: int = Field(description="Decisions in the window.")
    holds: int = Field(description="...held for people.")
    approvals: int = Field(description="...held, and approved.")
    expiries: int = Field(description="...held, and expired without a quorum.")
    reviewed: int = Field(
        description="Execute recommendations a person judged: by a vote that closed the "
        "approval, or by a post-hoc audit."
    )
    agreements: int = Field(description="...approved, or found correct.")
    overrides: int = Field(description="...rejected by the people who held them.")
    executions: int = Field(description="Actions carried out, with an outcome.")
    failures: int = Field(description="...that failed.")
    audits: int = Field(description="Executed actions audited after the fact.")
    audit_findings: int = Field(description="...found incorrect.")
    corrections: int = Field(description="Executed actions corrected afterwards.")
    checked: int = Field(description="Actions reviewed, carried out or corrected (each once).")
    errors: int = Field(description="Actions overridden, failed, found incorrect or corrected.")
    warnings: int = Field(
        default=0,
        description="Decisions the policy warned about (its warn rules), whatever the verdict.",
    )
    exceptions: int = Field(
        default=0, description="Actions whose failure was handed to people (an exception)."
    )
    exceptions_handled: int = Field(
        default=0, description="...whose latest exception people retried or marked handled."
    )
    agreement_bp: int = Field(description="agreements × 10000 ÷ reviewed.")
    failure_bp: int = Field(description="failures × 10000 ÷ executions.")
    error_bp: int = Field(description="errors × 10000 ÷ checked.")


class WindowView(BaseModel):
    """Which decisions the figures count: the latest `decisions` decided in the last `days`
    days at the level in force, since the ledger entry that set it."""

    decisions: int
    days: int
    since_seq: int | None = Field(
        description="The `autonomy` entry that set the level (None: the bundle's initial "
        "level, never changed)."
    )
    since: str | None


class CriteriaView(BaseModel):
    """The entry criteria of the next level, and whether the figures meet them."""

    level: int = Field(description="The level these criteria admit to.")
    min_reviewed: int
    min_agreement_bp: int
    max_failure_bp: int
    max_error_bp: int
    met: bool
    unmet: list[str] = Field(description="Each criterion not met, in words.")


class DemotionView(BaseModel):
    """When the gateway lowers the level by itself."""

    max_error_bp: int = Field(description="Demote when error_bp in the window is above this...")
    min_checked: int = Field(description="...once at least this many actions were checked.")
    due: bool


class PromotionView(BaseModel):
    """A promotion the gateway proposed; it takes effect when governors approve it."""

    id: str
    workflow: str
    case_type: str
    from_level: int
    to_level: int
    status: Literal["pending", "approved", "rejected", "superseded"]
    quorum: int
    approvals: int
    figures: Figures = Field(description="The figures that met the criteria.")
    criteria: dict[str, int]
    created_at: str
    seq: int = Field(description="The `autonomy` entry that proposed it.")
    votes: list[VoteView]
    closed_at: str | None = None
    closed_reason: str | None = None


class AutonomyChange(BaseModel):
    """One change of level, as its `autonomy` entry records it."""

    seq: int
    time: str
    event: Literal["promotion", "demotion", "set"]
    from_level: int
    to_level: int
    actor: str
    reason: str
    figures: Figures


class SeriesPoint(BaseModel):
    """One day of a case type's decisions: how many were reviewed and agreed, checked and
    wrong (rates None when there was nothing to divide by)."""

    day: str
    decisions: int
    reviewed: int
    agreement_bp: int | None
    checked: int
    error_bp: int | None


class AutonomyView(BaseModel):
    """A case type's autonomy: its level, its figures, and what would change the level."""

    workflow: str
    case_type: str
    level: int
    name: str
    source: str = Field(description="Where the level comes from.")
    window: WindowView
    figures: Figures
    audit_rate_bp: int = Field(description="Share of executed actions drawn for audit (bp).")
    promotion: CriteriaView | None = Field(
        description="The next level's entry criteria (None at the highest level allowed)."
    )
    demotion: DemotionView
    pending_promotion: PromotionView | None = None


class AutonomyDetail(AutonomyView):
    """A case type's autonomy with its changes and its figures day by day."""

    history: list[AutonomyChange]
    series: list[SeriesPoint]


class LevelRequest(BaseModel):
    """A governor's change of level, by hand."""

    model_config = ConfigDict(extra="forbid")

    level: Annotated[int, Field(ge=1, le=4, strict=True)] = Field(
        description="1 advisory, 2 supervised, 3 conditional, 4 full."
    )
    reason: Annotated[str, StringConstraints(min_length=1, max_length=2000)] = Field(
        description="Why (recorded in the ledger)."
    )


class AuditView(BaseModel):
    """An executed action drawn for post-hoc audit, and the finding once there is one."""

    id: str
    action_id: str
    workflow: str
    case_type: str
    action_type: str
    resource: str
    executor: str
    amount: str | None
    currency: str | None = Field(
        default=None, description="The proposal's params.currency, if it gave one."
    )
    level: int
    rate_bp: int
    status: Literal["pending", "correct", "incorrect"]
    created_at: str
    decision_seq: int
    auditor: str | None = None
    note: str | None = None
    finding_seq: int | None = None
    closed_at: str | None = None


class FindingRequest(BaseModel):
    """An auditor's finding on an executed action. An incorrect one needs a note."""

    model_config = ConfigDict(extra="forbid")

    finding: Literal["correct", "incorrect"]
    note: Annotated[str, StringConstraints(max_length=2000)] = ""


class CorrectionRequest(BaseModel):
    """An executed action had to be corrected afterwards: why, and anything worth keeping."""

    model_config = ConfigDict(extra="forbid")

    reason: Annotated[str, StringConstraints(min_length=1, max_length=2000)]
    details: dict[str, JsonValue] = Field(default_factory=dict)


# -- the policy lifecycle (gateway.lifecycle) ------------------------------------------------

BundleFiles = Annotated[
    dict[str, str],
    Field(
        min_length=1,
        description="The bundle's files: path relative to the bundle directory (rego/x.rego, "
        "casbin/model.conf, data.json, tests/cases.yaml, ...) → the file's UTF-8 text. "
        "`mandate policy activate DIR` sends every file of DIR.",
    ),
]


class BundleUpload(BaseModel):
    """A bundle to activate, or to run in shadow beside the active one."""

    model_config = ConfigDict(extra="forbid")

    files: BundleFiles
    reason: Annotated[str, StringConstraints(min_length=1, max_length=2000)] = Field(
        description="Why (recorded in the `policy` ledger entry)."
    )
    mode: Literal["active", "shadow"] = Field(
        "active",
        description="`active`: decide with it from now on. `shadow`: decide every new proposal "
        "with it too, enforce only the active verdict, and record the disagreements.",
    )
    signatures: Annotated[str, StringConstraints(max_length=1024 * 1024)] | None = Field(
        None,
        description="The bundle's `.signatures.json` (OPA's format, as `mandate policy sign` "
        "and `opa sign` write it): one JWT listing every file with its hash. Required when the "
        "gateway has a bundle key (`MANDATE_BUNDLE_KEY`): an unsigned bundle, or one whose "
        "files are not those signed, is a 422 naming the file (or `signatures`).",
    )


class BundleFileView(BaseModel):
    """One file of a bundle, as its `policy` ledger entry lists it."""

    path: str
    sha256: str
    bytes: int
    content: str | None = Field(None, description="The text, when asked for (`content=true`).")


class SignatureView(BaseModel):
    """Who signed a bundle, as checked against the gateway's bundle key when it was activated."""

    key_id: str | None = Field(description="The key id the signature names (`kid`), if any.")
    algorithm: str = Field(description="RS256, ES256, ...")
    key_sha256: str = Field(description="SHA-256 of the verifying key (SubjectPublicKeyInfo).")


class PolicyView(BaseModel):
    """The bundle in a slot (active or shadow): what it is, and who put it there, when, why."""

    mode: Literal["active", "shadow"]
    digest: str
    activated_at: str
    activated_by: str
    reason: str
    ledger_seq: int = Field(description="The `policy` entry that put it there.")
    signature: SignatureView | None = Field(
        None,
        description="Who signed it, checked at activation; null when the gateway had no "
        "bundle key then.",
    )
    workflows: list[str]
    files: list[BundleFileView]


class ActivationView(BaseModel):
    """The answer to an activation: the slot now, and whether this request changed it."""

    changed: bool = Field(description="False when the slot already held this bundle.")
    policy: PolicyView
    validation: dict[str, Any] | None = Field(
        None, description="Rego tests, decision cases and rules fired, as recorded."
    )


class SideView(BaseModel):
    """One side of a shadow comparison: the verdict and its reasons (or why there is none)."""

    verdict: str = Field(description="execute, hold, reject; for the shadow also refused, error")
    reasons: list[Reason]
    error: str | None = None


class DisagreementView(BaseModel):
    """A proposal the shadow bundle decided otherwise than the active one."""

    id: int
    action_id: str
    decision_seq: int
    decided_at: str
    workflow: str
    case_type: str
    action_type: str
    executor: str
    level: int
    verdict_changed: bool = Field(description="False: the same verdict for other reasons.")
    codes_added: list[str] = Field(description="Reason codes the shadow gives and not the active.")
    codes_removed: list[str] = Field(
        description="Reason codes the active bundle gives and not the shadow."
    )
    active: SideView
    shadow: SideView
    proposal: dict[str, Any]


class ShadowView(BaseModel):
    """The shadow bundle, how it compares, and its disagreements (newest first)."""

    shadow: PolicyView | None
    active_digest: str
    decided_while_running: int = Field(
        description="Proposals decided since the shadow started (processes follow it within "
        "their poll interval)."
    )
    disagreements: int
    verdict_changes: int
    reasons_changed: int = Field(
        0, description="Disagreements with the same verdict for other reasons (other codes)."
    )
    errors: int = Field(description="Disagreements where the shadow failed or refused.")
    this_process: dict[str, int] = Field(
        description="This process's comparisons: compared, disagreements, skipped (queue "
        "full), pending."
    )
    items: list[DisagreementView]
    next_before: int | None = Field(None, description="Pass as `before` for the next page.")


class ReplayRequest(BaseModel):
    """A candidate bundle to re-decide the recorded history with (or none: each decision's
    own bundle)."""

    model_config = ConfigDict(extra="forbid")

    files: BundleFiles | None = Field(
        None,
        description="The candidate bundle's files. Without them, each decision is replayed "
        "with the bundle that made it (a reproducibility check: no verdict may change).",
    )
    since: Annotated[str, StringConstraints(max_length=64)] | None = Field(
        None,
        description="Only decisions made at or after this time (2026-11-01 or "
        "2026-11-01T08:00:00Z).",
    )
    examples: Annotated[int, Field(ge=0, le=50)] = Field(
        3, description="Examples kept per verdict change (from → to)."
    )
