"""The decision path, one named step each:

    authenticate → validate → permit → evaluate → decide → record → (dispatch | hold | reject)

``authenticate`` lives in ``gateway.identity`` (the HTTP edge calls it); ``propose`` runs the
rest. Every input of a decision (the proposal, the executor, the level, the figures, the clock,
the action id) is recorded with it, so replaying the ledger reproduces every verdict.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from gateway.errors import Conflict, DecisionUnavailable, Forbidden, InvalidInput
from gateway.execution import Routing, intent_row
from gateway.identity import Identity
from gateway.models import ACTIONS, APPROVALS, EVENTS, INTENTS
from gateway.policy.bundle import Bundle
from gateway.policy.permit import PermitResult, Permitter
from gateway.policy.rego import EngineError, RegoEngine, RegoResult, package_of
from gateway.schemas import (
    ApprovalRef,
    AutonomyTrace,
    CasbinTrace,
    ExecutionRef,
    LedgerRef,
    Proposal,
    Reason,
    RegoTrace,
    Trace,
    Verdict,
    VerdictName,
)
from ledger.entry import canonical_json, format_time
from ledger.errors import EntryError, LedgerError
from ledger.store import Appended, Ledger, Record

__all__ = [
    "LEVEL_NAMES",
    "ActivePolicy",
    "AutonomyBook",
    "Decider",
    "Decision",
    "decide",
    "evaluate",
    "permit",
    "rego_input",
    "validate",
]

LEVEL_NAMES = {1: "advisory", 2: "supervised", 3: "conditional", 4: "full"}
ZERO_STATS: dict[str, int] = {
    "decisions": 0,
    "holds": 0,
    "approvals": 0,
    "agreements": 0,
    "overrides": 0,
    "failures": 0,
    "audit_findings": 0,
    "corrections": 0,
}
_DECIMAL = re.compile(r"-?(0|[1-9][0-9]{0,17})(\.[0-9]{1,18})?")


@dataclass(frozen=True)
class ActivePolicy:
    """The bundle in force and the engines built from it."""

    bundle: Bundle
    permitter: Permitter
    engine: RegoEngine

    @property
    def executor_roles(self) -> set[str]:
        """Roles that may propose something somewhere."""
        return self.permitter.roles_with_act("propose")


class AutonomyBook:
    """Autonomy levels per (workflow, case type): set by hand or by promotion, else the
    bundle's initial level."""

    def __init__(self, levels: dict[tuple[str, str], int] | None = None) -> None:
        self._levels = dict(levels or {})

    def level(self, bundle: Bundle, workflow: str, case_type: str) -> tuple[int, str]:
        """The level in force and where it comes from."""
        level = self._levels.get((workflow, case_type))
        if level is not None:
            return level, "set"
        config = bundle.workflows.get(workflow)
        initial = config.initial_level(case_type) if config else 1
        return initial, "bundle initial level"


# -- the steps -------------------------------------------------------------------------------


def validate(proposal: Proposal, policy: ActivePolicy) -> None:
    """Step 2: beyond the schema, is this a proposal the ledger and the policy can take?"""
    errors: list[tuple[str, str]] = []
    workflows = policy.bundle.workflows
    if proposal.workflow not in workflows:
        known = ", ".join(sorted(workflows)) or "none"
        errors.append(("workflow", f"unknown workflow {proposal.workflow!r}; known: {known}"))
    amount = proposal.params.get("amount")
    if amount is not None and not (isinstance(amount, str) and _DECIMAL.fullmatch(amount)):
        errors.append(
            (
                "params.amount",
                f'must be a decimal string such as "20.00", got {orjson.dumps(amount).decode()}',
            )
        )
    for name in ("resource", "params", "context"):
        try:
            canonical_json(getattr(proposal, name), name)
        except EntryError as exc:
            if exc.path != "params.amount":
                errors.append((exc.path, exc.problem))
    if errors:
        raise InvalidInput(errors)


def permit(
    permitter: Permitter, identity: Identity, proposal: Proposal, *, admitted: bool = False
) -> PermitResult:
    """Step 3: may this executor propose this action in this workflow? (Casbin)

    A caller whose role proposes nothing at all, or whose token is bound to another workflow,
    is refused outright (Forbidden); an executor asking beyond its mandate gets an answer that
    ``decide`` turns into a recorded rejection. A proposal ``admitted`` before (re-evaluated
    under a new bundle) gets Casbin's answer even if its executor's role proposes nothing now.
    """
    if not admitted and identity.role not in permitter.roles_with_act("propose"):
        raise Forbidden(f"role {identity.role!r} may not propose actions")
    if identity.workflow is not None and identity.workflow != proposal.workflow:
        raise Forbidden(
            f"token {identity.name!r} is bound to workflow {identity.workflow!r}, "
            f"not {proposal.workflow!r}"
        )
    try:
        return permitter.permit(identity.role, proposal.workflow, proposal.action_type, "propose")
    except Exception as exc:
        raise DecisionUnavailable(f"Casbin failed: {exc}") from exc


def rego_input(
    proposal: dict[str, Any],
    identity: Identity,
    level: int,
    stats: dict[str, int],
    now: str,
) -> dict[str, Any]:
    """What the workflow's Rego sees. Built only from recorded values, so replay rebuilds it."""
    confidence = proposal.get("confidence")
    return {
        "proposal": {**proposal, "confidence": None if confidence is None else float(confidence)},
        "executor": {"name": identity.name, "role": identity.role, "owner": identity.owner},
        "autonomy": {"level": level, "name": LEVEL_NAMES[level]},
        "stats": stats,
        "now": now,
    }


def evaluate(engine: RegoEngine, workflow: str, input_: dict[str, Any]) -> RegoResult:
    """Step 4: what does the workflow's policy say at this level? (Rego)"""
    try:
        return engine.evaluate(workflow, input_)
    except EngineError as exc:
        raise DecisionUnavailable(str(exc)) from exc
    except Exception as exc:
        raise DecisionUnavailable(f"the Rego engine failed: {exc}") from exc


@dataclass(frozen=True)
class Decision:
    """A verdict, its reasons, and what the gateway would have done without the level-1 rule."""

    verdict: VerdictName
    reasons: list[Reason]
    recommendation: VerdictName


@dataclass(frozen=True)
class Judgement:
    """A decision with everything recorded beside it."""

    decision: Decision
    trace: Trace
    stats: dict[str, int]
    approval: ApprovalRef | None
    recorded: dict[str, Any]  # the proposal as the ledger keeps it


def decide(permitted: PermitResult, rego: RegoResult | None, level: int) -> Decision:
    """Step 5: reject if Casbin denies or the policy denies; hold if the policy holds or the
    level is 1 (the gateway's own rule, whatever the policy says); otherwise execute."""
    if not permitted.allowed:
        role, workflow, action_type, act = permitted.request
        return Decision(
            "reject",
            [
                Reason(
                    code="not_permitted",
                    message=f"role {role} may not {act} {action_type} in {workflow}",
                    source="casbin",
                )
            ],
            "reject",
        )
    assert rego is not None
    if rego.deny:
        return Decision("reject", _policy_reasons(rego.deny), "reject")
    reasons = _policy_reasons(rego.hold)
    recommendation: VerdictName = "hold" if reasons else "execute"
    if level == 1:
        reasons.append(
            Reason(
                code="advisory_level",
                message=f"autonomy level 1 (advisory): a person approves every action; "
                f"the gateway recommends {recommendation}",
                source="gateway",
            )
        )
    verdict: VerdictName = "hold" if reasons else "execute"
    return Decision(verdict, reasons, recommendation)


def _policy_reasons(items: list[dict[str, Any]]) -> list[Reason]:
    return [
        Reason(
            code=str(item.get("code", "unnamed")),
            message=str(item.get("message", item.get("code", ""))),
            source="rego",
        )
        for item in items
    ]


# -- the whole path --------------------------------------------------------------------------


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class Decider:
    """Runs a proposal from validation to a durable verdict. Dependencies come in here."""

    engine: Engine
    ledger: Ledger
    policy: ActivePolicy
    autonomy: AutonomyBook
    routing: Routing = field(default_factory=lambda: Routing({}))
    on_hold: Callable[[Verdict, Proposal, Identity], None] | None = None
    on_execute: Callable[[], None] | None = None
    clock: Callable[[], dt.datetime] = _utcnow
    new_id: Callable[[str], str] = _new_id
    _inflight: dict[tuple[str, str], tuple[str, asyncio.Future[Verdict]]] = field(
        default_factory=dict
    )

    async def propose(self, identity: Identity, proposal: Proposal) -> Verdict:
        """Validate, permit, evaluate, decide and record; answer once the ledger has it."""
        policy = self.policy
        validate(proposal, policy)
        key = (identity.owner, proposal.idempotency_key)
        digest = _request_digest(proposal)
        earlier = self._inflight.get(key)
        if earlier is not None:
            # The same key is being decided right now: answer what that decision answers.
            verdict = await asyncio.shield(earlier[1])
            if earlier[0] != digest:
                raise _conflict(key[1], verdict.action_id)
            return verdict
        replay = self._recorded(key, digest)
        if replay is not None:
            return replay
        waiter: asyncio.Future[Verdict] = asyncio.get_running_loop().create_future()
        self._inflight[key] = (digest, waiter)
        try:
            verdict = await self._decide_and_record(identity, proposal, digest, policy)
        except BaseException as exc:
            waiter.set_exception(exc)
            waiter.exception()  # mark retrieved: duplicates that never came must not warn
            raise
        else:
            waiter.set_result(verdict)
            return verdict
        finally:
            del self._inflight[key]

    def _recorded(self, key: tuple[str, str], digest: str) -> Verdict | None:
        """The earlier answer to this idempotency key, or Conflict if the body differs."""
        with self.engine.connect() as conn:
            row = conn.execute(_BY_IDEMPOTENCY_KEY, {"owner": key[0], "key": key[1]}).first()
        if row is None:
            return None
        if row.request_digest != digest:
            raise _conflict(key[1], row.id)
        answer = orjson.loads(row.response)
        answer["ledger"] = _ledger_ref(row.proposal_seq, row.decision_seq, row.decision_leaf)
        return Verdict.model_validate(answer)

    def judge(
        self,
        identity: Identity,
        proposal: Proposal,
        policy: ActivePolicy,
        moment: dt.datetime,
        *,
        admitted: bool = False,
    ) -> Judgement:
        """Steps 3 to 5 (permit, evaluate, decide) for a proposal, with the trace that shows
        them; also used (``admitted``) to re-evaluate a held proposal under a new bundle."""
        now = format_time(moment)
        recorded = _recorded_proposal(proposal)
        level, level_source = self.autonomy.level(
            policy.bundle, proposal.workflow, proposal.case_type
        )
        stats = dict(ZERO_STATS)
        permitted = permit(policy.permitter, identity, proposal, admitted=admitted)
        input_ = rego_input(recorded, identity, level, stats, now)
        rego = evaluate(policy.engine, proposal.workflow, input_) if permitted.allowed else None
        decision = decide(permitted, rego, level)
        trace = Trace(
            casbin=CasbinTrace.model_validate(permitted.trace()),
            rego=RegoTrace(
                engine=policy.engine.name,
                version=policy.engine.version,
                query=[f"{package_of(proposal.workflow)}.{rule}" for rule in ("deny", "hold")],
                input_digest=_input_digest(input_),
                output=None if rego is None else _normalised(rego),
            ),
            autonomy=AutonomyTrace(level=level, name=LEVEL_NAMES[level], source=level_source),
            bundle_digest=policy.bundle.digest,
            decided_at=now,
            recommendation=decision.recommendation,
        )
        approval = None
        if decision.verdict == "hold":
            config = policy.bundle.workflows[proposal.workflow]
            approval = ApprovalRef(
                id=self.new_id("apr"),
                quorum=config.quorum(proposal.case_type),
                expires_at=format_time(moment + dt.timedelta(hours=config.approval_ttl_hours)),
            )
        return Judgement(decision, trace, stats, approval, recorded)

    async def _decide_and_record(
        self, identity: Identity, proposal: Proposal, digest: str, policy: ActivePolicy
    ) -> Verdict:
        action_id = self.new_id("act")
        judgement = self.judge(identity, proposal, policy, self.clock())
        decision, trace, approval = judgement.decision, judgement.trace, judgement.approval
        proposal_body = {
            "action_id": action_id,
            "proposal": judgement.recorded,
            "executor": identity.to_json(),
            "request_digest": digest,
        }
        execution = None
        if decision.verdict != "reject":
            execution = ExecutionRef(
                adapter=self.routing.route(identity.name, proposal.workflow)[0]
            )
        answer = {
            "action_id": action_id,
            "verdict": decision.verdict,
            "reasons": [r.model_dump() for r in decision.reasons],
            "trace": trace.model_dump(),
            "approval": None if approval is None else approval.model_dump(),
            "execution": None if execution is None else execution.model_dump(),
        }
        records = [
            Record("proposal", identity.name, action_id, proposal_body),
            Record("decision", "mandate", action_id, answer | {"stats": judgement.stats}),
        ]
        # What a retry with the same idempotency key is answered; the ledger block is rebuilt.
        stored = orjson.dumps(answer)

        def rows(appended: list[Appended]) -> list[tuple[sa.Table, dict[str, Any]]]:
            return _decision_rows(
                identity,
                proposal,
                digest,
                judgement,
                action_id,
                stored,
                appended,
                policy,
                self.routing,
            )

        try:
            appended = await self.ledger.append_many_async(records, rows=rows)
        except LedgerError as exc:
            raced = self._recorded((identity.owner, proposal.idempotency_key), digest)
            if raced is not None:
                return raced
            raise DecisionUnavailable(f"the ledger did not record the decision: {exc}") from exc
        verdict = Verdict(
            action_id=action_id,
            verdict=decision.verdict,
            reasons=decision.reasons,
            trace=trace,
            ledger=_ledger_ref(appended[0].seq, appended[1].seq, appended[1].leaf_hash.hex()),
            approval=approval,
            execution=execution,
        )
        if decision.verdict == "execute" and self.on_execute is not None:
            self.on_execute()
        elif decision.verdict == "hold" and self.on_hold is not None:
            self.on_hold(verdict, proposal, identity)
        return verdict


def _ledger_ref(proposal_seq: int, decision_seq: int, leaf: str) -> LedgerRef:
    return LedgerRef(proposal_seq=proposal_seq, decision_seq=decision_seq, leaf_hash=leaf)


def _input_digest(input_: dict[str, Any]) -> str:
    """SHA-256 of the Rego input as recorded: canonical JSON with confidence as the decimal
    string the ledger keeps (entries hold no floats), so replay recomputes the same digest."""
    proposal = input_["proposal"]
    confidence = proposal["confidence"]
    recorded = {
        **input_,
        "proposal": {**proposal, "confidence": None if confidence is None else repr(confidence)},
    }
    return hashlib.sha256(canonical_json(recorded, "input")).hexdigest()


def _normalised(rego: RegoResult) -> dict[str, Any]:
    return {
        "deny": [r.model_dump(exclude={"source"}) for r in _policy_reasons(rego.deny)],
        "hold": [r.model_dump(exclude={"source"}) for r in _policy_reasons(rego.hold)],
    }


def _recorded_proposal(proposal: Proposal) -> dict[str, Any]:
    """The proposal as the ledger keeps it: confidence as a decimal string (entries hold no
    floats); the exact digits the executor sent survive as ``repr`` of the parsed float."""
    data = proposal.model_dump()
    if proposal.confidence is not None:
        data["confidence"] = repr(proposal.confidence)
    return data


def _request_digest(proposal: Proposal) -> str:
    return hashlib.sha256(canonical_json(_recorded_proposal(proposal), "proposal")).hexdigest()


def _conflict(key: str, action_id: str) -> Conflict:
    return Conflict(
        f"idempotency key {key!r} was used for a different proposal (action {action_id}); "
        "use a new key for a new proposal"
    )


# Built once: constructing and cache-keying a SQLAlchemy select per proposal costs more than
# running it.
_BY_IDEMPOTENCY_KEY = sa.select(
    ACTIONS.c.request_digest,
    ACTIONS.c.response,
    ACTIONS.c.id,
    ACTIONS.c.proposal_seq,
    ACTIONS.c.decision_seq,
    ACTIONS.c.decision_leaf,
).where(
    ACTIONS.c.owner == sa.bindparam("owner"),
    ACTIONS.c.idempotency_key == sa.bindparam("key"),
)


def approval_summary(
    identity: Identity, proposal: Proposal, judgement: Judgement
) -> dict[str, Any]:
    """What the inbox shows of a held action without opening the ledger."""
    return {
        "executor": identity.name,
        "action_type": proposal.action_type,
        "resource": proposal.resource,
        "amount": proposal.params.get("amount"),
        "confidence": judgement.recorded.get("confidence"),
        "reasons": [r.model_dump() for r in judgement.decision.reasons],
        "recommendation": judgement.decision.recommendation,
    }


def _decision_rows(
    identity: Identity,
    proposal: Proposal,
    digest: str,
    judgement: Judgement,
    action_id: str,
    stored: bytes,
    appended: list[Appended],
    policy: ActivePolicy,
    routing: Routing,
) -> list[tuple[sa.Table, dict[str, Any]]]:
    """The gateway's rows, written in the ledger's transaction: both land or neither does."""
    created = appended[0].time
    verdict = judgement.decision.verdict
    approval = judgement.approval
    rows: list[tuple[sa.Table, dict[str, Any]]] = [
        (
            ACTIONS,
            {
                "id": action_id,
                "owner": identity.owner,
                "idempotency_key": proposal.idempotency_key,
                "request_digest": digest,
                "executor": identity.name,
                "workflow": proposal.workflow,
                "case_type": proposal.case_type,
                "action_type": proposal.action_type,
                "verdict": verdict,
                "status": _STATUS[verdict],
                "proposal_seq": appended[0].seq,
                "decision_seq": appended[1].seq,
                "decision_leaf": appended[1].leaf_hash.hex(),
                "response": stored,
                "created_at": created,
            },
        )
    ]
    for entry, kind in zip(appended, ("proposal", "decision"), strict=True):
        rows.append(
            (EVENTS, {"seq": entry.seq, "action_id": action_id, "kind": kind, "time": entry.time})
        )
    if approval is not None:
        rows.append(
            (
                APPROVALS,
                approval_row(
                    approval, action_id, identity, proposal, judgement, policy, created, digest
                ),
            )
        )
    if verdict == "execute":
        rows.append(
            (INTENTS, intent_row(action_id, routing, identity.name, proposal.workflow, created))
        )
    return rows


def approval_row(
    approval: ApprovalRef,
    action_id: str,
    identity: Identity,
    proposal: Proposal,
    judgement: Judgement,
    policy: ActivePolicy,
    created: str,
    digest: str,
) -> dict[str, Any]:
    """The row a held action's approval starts as."""
    return {
        "id": approval.id,
        "action_id": action_id,
        "workflow": proposal.workflow,
        "case_type": proposal.case_type,
        "status": "pending",
        "quorum": approval.quorum,
        "expires_at": approval.expires_at,
        "created_at": created,
        "bundle_digest": policy.bundle.digest,
        "proposal_digest": digest,
        "proposer_owner": identity.owner,
        "summary": orjson.dumps(approval_summary(identity, proposal, judgement)),
        "closed_at": None,
        "closed_reason": None,
    }


_STATUS: dict[str, str] = {"execute": "approved", "hold": "held", "reject": "rejected"}
