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
import logging
import math
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from gateway.audits import audit_row, sampled
from gateway.errors import Conflict, DecisionUnavailable, Forbidden, InvalidInput
from gateway.execution import Routing, handover, intent_row
from gateway.figures import ZERO_FIGURES, FigureBook, Standing, WindowSpec, figures_row
from gateway.history import HistoryBook, amount_of, resource_digest
from gateway.identity import Identity
from gateway.models import ACTIONS, APPROVALS, AUDITS, AUTONOMY, EVENTS, FIGURES, INTENTS
from gateway.policy.autonomy import Terms, terms_for
from gateway.policy.bundle import Bundle, BundleError, WorkflowConfig
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
    "Classification",
    "Decider",
    "Decision",
    "amount_problem",
    "classify",
    "classify_admitted",
    "classify_input",
    "decide",
    "evaluate",
    "permit",
    "rego_input",
    "validate",
]

LEVEL_NAMES = {1: "advisory", 2: "supervised", 3: "conditional", 4: "full"}
# The figures a decision sees when none are kept (``AutonomyBook(figures=None)``); the names
# are those of ``gateway.figures``.
ZERO_STATS: dict[str, int] = dict(ZERO_FIGURES)
log = logging.getLogger("mandate")
_DECIMAL = re.compile(r"(-?)(0|[1-9][0-9]{0,17})(\.[0-9]{1,18})?")


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


_STANDINGS = sa.select(
    AUTONOMY.c.workflow, AUTONOMY.c.case_type, AUTONOMY.c.level, AUTONOMY.c.seq,
    AUTONOMY.c.reason, AUTONOMY.c.changed_at,
)  # fmt: skip
_CASE_OF = sa.select(FIGURES.c.workflow, FIGURES.c.case_type).where(
    FIGURES.c.action_id == sa.bindparam("action_id")
)
_EVENTS = ("promotion", "demotion", "set")


class AutonomyBook:
    """Autonomy levels per (workflow, case type), and the measured figures of the level in force.

    A case type runs at its bundle's initial level until a promotion, a demotion or a governor
    changes it; then ``gateway_autonomy`` holds its level and the ledger entry that set it
    (where the window of its figures starts). Every process reads that table through a cache
    that lives ``ttl`` seconds and is dropped when this process changes a level, so a change
    made on one gateway is in force on all of them within ``ttl``. ``levels`` fixes levels in
    memory instead (no database). ``figures`` reads and keeps the figures; without it (None)
    every decision sees zeros and none are kept. ``reviewer`` (set by the runtime) is awaited
    after each event that judges an action, to promote or demote.
    """

    def __init__(
        self,
        levels: dict[tuple[str, str], int] | None = None,
        *,
        engine: Engine | None = None,
        figures: FigureBook | None = None,
        ttl: float = 1.0,
    ) -> None:
        self._engine = engine
        self.figures = figures
        self.ttl = ttl
        self._standings = {
            key: Standing(level, -1, "set", "") for key, level in (levels or {}).items()
        }
        self._read_at = -math.inf
        self.reviewer: Callable[[str, str], Awaitable[None]] | None = None

    def standings(self, *, fresh: bool = False) -> dict[tuple[str, str], Standing]:
        """Every case type whose level was changed, by (workflow, case type)."""
        if self._engine is None:
            return self._standings
        clock = time.monotonic()
        if fresh or clock - self._read_at >= self.ttl:
            with self._engine.connect() as conn:
                rows = conn.execute(_STANDINGS).all()
            self._standings = {
                (row.workflow, row.case_type): Standing(
                    row.level, row.seq, _event_of(row.reason), row.changed_at
                )
                for row in rows
            }
            self._read_at = clock
        return self._standings

    def standing(self, workflow: str, case_type: str, *, fresh: bool = False) -> Standing | None:
        """The case type's changed level and since when; None while it runs at the initial
        level."""
        return self.standings(fresh=fresh).get((workflow, case_type))

    def level(self, bundle: Bundle, workflow: str, case_type: str) -> tuple[int, str]:
        """The level in force and where it comes from."""
        standing = self.standing(workflow, case_type)
        if standing is not None:
            if standing.seq < 0:
                return standing.level, "set"
            return standing.level, f"{standing.event} at ledger #{standing.seq}"
        config = bundle.workflows.get(workflow)
        initial = config.initial_level(case_type) if config else 1
        return initial, "bundle initial level"

    def terms(self, bundle: Bundle, workflow: str, case_type: str) -> Terms:
        """The bundle's autonomy terms for the case type; a malformed bundle fails closed."""
        try:
            return terms_for(bundle, workflow, case_type)
        except BundleError as exc:
            raise DecisionUnavailable(f"the bundle's autonomy terms are unusable: {exc}") from exc

    def window(
        self, bundle: Bundle, workflow: str, case_type: str, level: int, *, fresh: bool = False
    ) -> WindowSpec:
        """The window the figures of ``level`` are counted over."""
        terms = self.terms(bundle, workflow, case_type)
        standing = self.standing(workflow, case_type, fresh=fresh)
        since = standing.seq if standing is not None and standing.level == level else -1
        return WindowSpec(
            workflow, case_type, level, since, terms.window_decisions, terms.window_days
        )

    def stats(
        self, bundle: Bundle, workflow: str, case_type: str, level: int, moment: dt.datetime
    ) -> dict[str, int]:
        """The figures a decision at ``level`` sees (``input.stats``), through the cache."""
        if self.figures is None:
            return dict(ZERO_STATS)
        return self.figures.cached(self.window(bundle, workflow, case_type, level), moment)

    def audit(
        self,
        bundle: Bundle,
        workflow: str,
        case_type: str,
        level: int,
        verdict: str,
        action_id: str,
    ) -> dict[str, Any] | None:
        """For an executed action: the level's audit rate and whether the action is in the
        sample (``gateway.audits.sampled``), as its decision entry records them."""
        if verdict != "execute":
            return None
        rate = self.terms(bundle, workflow, case_type).audit_rate(level)
        return {"rate_bp": rate, "sampled": sampled(action_id, rate)}

    def decided(self, workflow: str, case_type: str, verdict: str, *, warned: bool = False) -> None:
        """This process recorded a decision: count it in the cached figures."""
        if self.figures is not None:
            self.figures.bump(workflow, case_type, verdict, warned=warned)

    def forget(self, workflow: str | None = None, case_type: str | None = None) -> None:
        """Read levels and figures from the database next time (after a local change)."""
        self._read_at = -math.inf
        if self.figures is not None:
            self.figures.forget(workflow, case_type)

    async def after(self, workflow: str, case_type: str) -> None:
        """An event judged an action of this case type: drop its cached figures and let the
        reviewer promote or demote. A failing review is logged: the event stands recorded."""
        if self.figures is not None:
            self.figures.forget(workflow, case_type)
        if self.reviewer is None:
            return
        try:
            await self.reviewer(workflow, case_type)
        except Exception:
            log.exception("the autonomy review of %s/%s failed", workflow, case_type)

    async def after_action(self, action_id: str) -> None:
        """``after`` for the case type of an action (once its outcome is recorded)."""
        if self._engine is None or self.figures is None:
            return
        try:
            with self._engine.connect() as conn:
                row = conn.execute(_CASE_OF, {"action_id": action_id}).first()
        except Exception:
            log.exception("the case type of %s could not be read for its review", action_id)
            return
        if row is not None:
            await self.after(row.workflow, row.case_type)


def _event_of(reason: str) -> str:
    """The event a ``gateway_autonomy`` reason names (``promotion: ...``)."""
    event = reason.split(":", 1)[0]
    return event if event in _EVENTS else "set"


# -- the steps -------------------------------------------------------------------------------


def validate(proposal: Proposal, policy: ActivePolicy) -> None:
    """Step 2: beyond the schema, is this a proposal the ledger and the policy can take? The
    workflow and its action type are the bundle's (``data.json``), a claimed case type is one
    that action type may be, and an amount is a decimal string within the workflow's scale."""
    errors: list[tuple[str, str]] = []
    workflows = policy.bundle.workflows
    config = workflows.get(proposal.workflow)
    if config is None:
        known = ", ".join(sorted(workflows)) or "none"
        errors.append(("workflow", f"unknown workflow {proposal.workflow!r}; known: {known}"))
    else:
        listed = config.action_types.get(proposal.action_type)
        if listed is None:
            known = ", ".join(sorted(config.action_types))
            errors.append(
                (
                    "action_type",
                    f"workflow {proposal.workflow} has no action type {proposal.action_type!r}; "
                    f"it has {known}",
                )
            )
        elif proposal.case_type is not None and proposal.case_type not in listed:
            errors.append(
                ("case_type", _not_listed(proposal.action_type, listed, proposal.case_type))
            )
    amount = proposal.params.get("amount")
    if amount is not None:
        problem = amount_problem(amount, config)
        if problem is not None:
            errors.append(("params.amount", problem))
    for name in ("resource", "params", "context"):
        try:
            canonical_json(getattr(proposal, name), name)
        except EntryError as exc:
            if exc.path != "params.amount":
                errors.append((exc.path, exc.problem))
    if errors:
        raise InvalidInput(errors)


def amount_problem(amount: Any, config: WorkflowConfig | None) -> str | None:
    """Why ``amount`` is not an amount this workflow takes, or None. Amounts are decimal
    strings with no more decimals than the workflow's ``amount_scale``, and positive unless
    it allows ``signed_amounts``: the gateway never passes on a string the policy engines
    could read differently (untrimmed, signed with +, leading zeros, exponents)."""
    match = _DECIMAL.fullmatch(amount) if isinstance(amount, str) else None
    if match is None:
        return f'must be a decimal string such as "20.00", got {orjson.dumps(amount).decode()}'
    if config is None:
        return None
    sign, whole, decimals = match.groups()
    if decimals is not None and len(decimals) - 1 > config.amount_scale:
        return (
            f"{amount} has {len(decimals) - 1} decimals; workflow {config.name} takes at most "
            f"{config.amount_scale}"
        )
    zero = whole == "0" and (decimals is None or not decimals.strip(".0"))
    if not config.signed_amounts and (sign or zero):
        return f"{amount} is not positive; workflow {config.name} takes amounts above 0"
    if zero and sign:
        return "-0 is not an amount; write 0"
    return None


def _not_listed(action_type: str, listed: tuple[str, ...], case_type: str) -> str:
    allowed = ", ".join(listed)
    return f"{action_type} may be case type {allowed}, not {case_type!r} (the bundle decides)"


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


CaseTypeSource = Literal["classified", "only", "claimed"]


@dataclass(frozen=True)
class Classification:
    """The case type a proposal is decided as, and how the bundle came to it."""

    case_type: str
    source: CaseTypeSource


def classify(
    engine: RegoEngine,
    config: WorkflowConfig,
    proposal: Proposal,
    input_: dict[str, Any],
    *,
    admitted: str | None = None,
) -> Classification:
    """Step 4: which case type is this? The bundle's to decide, never the proposer's: the
    workflow's ``case_type`` rule if it gives one, else the only case type the action type
    lists, else the claimed one if listed (``validate`` checked that). A claim that disagrees,
    or none where several are listed, is a 422 naming the allowed ones. A proposal
    ``admitted`` before (re-evaluated under a new bundle; ``admitted`` is the case type it was
    decided as) keeps that case type where the rule is silent, and takes a new classification
    without a 422."""
    listed = config.action_types[proposal.action_type]
    try:
        classified = engine.classify(proposal.workflow, input_)
    except EngineError as exc:
        raise DecisionUnavailable(str(exc)) from exc
    except Exception as exc:
        raise DecisionUnavailable(f"the Rego engine failed: {exc}") from exc
    claimed = proposal.case_type if admitted is None else admitted
    if classified is not None:
        if classified not in listed:
            raise DecisionUnavailable(
                f"the bundle classifies this {proposal.action_type} as {classified!r}, which "
                f"data.json does not list for it ({', '.join(listed)})"
            )
        if claimed not in (None, classified) and admitted is None:
            raise InvalidInput(
                [
                    (
                        "case_type",
                        f"the bundle classifies this proposal as {classified}, not {claimed!r}",
                    )
                ]
            )
        return Classification(classified, "classified")
    if claimed is not None and claimed in listed and (admitted or len(listed) > 1):
        return Classification(claimed, "claimed")
    if len(listed) == 1:
        return Classification(listed[0], "only")
    raise InvalidInput(
        [
            (
                "case_type",
                f"{proposal.action_type} may be case type {', '.join(listed)} and no rule "
                "classifies this proposal: name one",
            )
        ]
    )


def classify_admitted(
    policy: ActivePolicy, proposal: Proposal, input_: dict[str, Any], admitted: str | None
) -> tuple[Classification, InvalidInput | None]:
    """``classify``, and for a proposal ``admitted`` before (re-evaluated under a new bundle,
    as the case type it was decided as) also ``validate`` again: what the new bundle no longer
    takes comes back as the refusal that ``decide`` turns into a recorded rejection."""
    try:
        if admitted is not None:
            validate(proposal, policy)
        config = policy.bundle.workflows[proposal.workflow]
        return classify(policy.engine, config, proposal, input_, admitted=admitted), None
    except InvalidInput as exc:
        if admitted is None:
            raise
        return Classification(admitted, "claimed"), exc


def classify_input(proposal: dict[str, Any], identity: Identity, now: str) -> dict[str, Any]:
    """What the ``case_type`` rule sees: the proposal, the executor and the clock (not the
    level or the figures, which depend on the case type)."""
    confidence = proposal.get("confidence")
    return {
        "proposal": {**proposal, "confidence": None if confidence is None else float(confidence)},
        "executor": {"name": identity.name, "role": identity.role, "owner": identity.owner},
        "now": now,
    }


def rego_input(
    proposal: dict[str, Any],
    identity: Identity,
    case_type: str,
    level: int,
    stats: dict[str, int],
    now: str,
    history: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What the workflow's Rego sees. Built only from recorded values, so replay rebuilds it.
    ``history`` (``gateway.history``) is left out for decisions recorded without it."""
    input_ = classify_input(proposal, identity, now) | {
        "autonomy": {"case_type": case_type, "level": level, "name": LEVEL_NAMES[level]},
        "stats": stats,
    }
    if history is not None:
        input_["history"] = history
    return input_


def evaluate(engine: RegoEngine, workflow: str, input_: dict[str, Any]) -> RegoResult:
    """Step 5: what does the workflow's policy say at this level? (Rego)"""
    try:
        return engine.evaluate(workflow, input_)
    except EngineError as exc:
        raise DecisionUnavailable(str(exc)) from exc
    except Exception as exc:
        raise DecisionUnavailable(f"the Rego engine failed: {exc}") from exc


@dataclass(frozen=True)
class Decision:
    """A verdict, its reasons, and what the gateway would have done without the level-1 rule;
    ``warnings``: the policy's advisories, which never change the verdict."""

    verdict: VerdictName
    reasons: list[Reason]
    recommendation: VerdictName
    warnings: list[Reason] = field(default_factory=list)


@dataclass(frozen=True)
class Judgement:
    """A decision with everything recorded beside it."""

    decision: Decision
    trace: Trace
    stats: dict[str, int]
    approval: ApprovalRef | None
    recorded: dict[str, Any]  # the proposal as the ledger keeps it
    case_type: str  # as the bundle classified it
    history: dict[str, Any] | None = None  # input.history, recorded beside the figures


def decide(
    permitted: PermitResult,
    rego: RegoResult | None,
    level: int,
    refused: InvalidInput | None = None,
) -> Decision:
    """Step 6: reject if Casbin denies or the policy denies; hold if the policy holds or the
    level is 1 (the gateway's own rule, whatever the policy says); otherwise execute. A held
    proposal that a new bundle no longer takes (``refused``) is rejected. The policy's
    ``warn`` reasons go beside the verdict, whatever it is, and never change it."""
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
    if refused is not None:
        reason = Reason(
            code="not_taken",
            message=f"the bundle no longer takes it: {refused.detail}",
            source="gateway",
        )
        return Decision("reject", [reason], "reject")
    assert rego is not None
    warnings = _policy_reasons(rego.warn)
    if rego.deny:
        return Decision("reject", _policy_reasons(rego.deny), "reject", warnings)
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
    return Decision(verdict, reasons, recommendation, warnings)


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
    # The shadow bundle's hook (``gateway.policies.ShadowRunner.offer``): told of every fresh
    # decision once it is durable and answered; it only queues, and what it raises is logged.
    shadow: Callable[[Verdict], None] | None = None
    # The history signals (input.history); None: decisions see none and record none.
    history: HistoryBook | None = None
    # Why this process must not decide now (the active bundle does not load here): every
    # proposal gets 503 until it does (``gateway.policies``), never a verdict of a stale bundle.
    unavailable: str | None = None
    _inflight: dict[tuple[str, str], tuple[str, Identity, asyncio.Future[Verdict]]] = field(
        default_factory=dict
    )

    async def propose(self, identity: Identity, proposal: Proposal) -> Verdict:
        """Validate, permit, evaluate, decide and record; answer once the ledger has it."""
        if self.unavailable is not None:
            raise DecisionUnavailable(self.unavailable)
        policy = self.policy
        validate(proposal, policy)
        key = (identity.owner, proposal.idempotency_key)
        digest = _request_digest(proposal)
        earlier = self._inflight.get(key)
        if earlier is not None:
            # The same key is being decided right now: answer what that decision answers, to
            # a token that could have proposed it (another learns nothing, not even its fate).
            if earlier[1].standing != identity.standing:
                raise _conflict(key[1], other_standing=True)
            verdict = await asyncio.shield(earlier[2])
            if earlier[0] != digest:
                raise _conflict(key[1])
            return verdict
        # A retry of a proposal decided earlier is recognised when its rows meet the unique
        # (owner, key) constraint in the ledger's transaction, which then rolls back: no lookup
        # on the way in for every proposal, and no entries for the retry.
        waiter: asyncio.Future[Verdict] = asyncio.get_running_loop().create_future()
        self._inflight[key] = (digest, identity, waiter)
        try:
            try:
                verdict = await self._decide_and_record(identity, proposal, digest, policy)
            except DecisionUnavailable:
                try:
                    # Decided before: its answer stands.
                    recorded = self._recorded(key, digest, identity)
                except sa.exc.SQLAlchemyError:
                    recorded = None  # the database is down: say why the decision is not made
                if recorded is None:
                    raise
                verdict = recorded
        except BaseException as exc:
            waiter.set_exception(exc)
            waiter.exception()  # mark retrieved: duplicates that never came must not warn
            raise
        else:
            waiter.set_result(verdict)
            self._offer_shadow(verdict)
            return verdict
        finally:
            del self._inflight[key]

    def _offer_shadow(self, verdict: Verdict) -> None:
        """Hand a fresh decision to the shadow bundle, if one runs: never the live verdict's
        business, so nothing it does can fail or change it."""
        if self.shadow is None:
            return
        try:
            self.shadow(verdict)
        except Exception:
            log.exception("the shadow bundle was not told of %s", verdict.action_id)

    def _recorded(self, key: tuple[str, str], digest: str, identity: Identity) -> Verdict | None:
        """The earlier answer to this idempotency key, or Conflict if the body differs or
        ``identity`` could not have proposed it."""
        with self.engine.connect() as conn:
            row = conn.execute(_BY_IDEMPOTENCY_KEY, {"owner": key[0], "key": key[1]}).first()
        if row is None:
            return None
        if not self.may_act_for(identity, row.executor, row.proposal_seq):
            raise _conflict(key[1], other_standing=True)
        if row.request_digest != digest:
            raise _conflict(key[1])
        answer = orjson.loads(row.response)
        answer["ledger"] = _ledger_ref(row.proposal_seq, row.decision_seq, row.decision_leaf)
        return Verdict.model_validate(answer)

    def may_act_for(self, identity: Identity, executor: str, proposal_seq: int) -> bool:
        """Whether ``identity`` could have made the proposal recorded at ``proposal_seq`` by
        the token named ``executor``: that token, or another of its standing, as the proposal
        entry records it. Only such a token is answered a retried idempotency key, or reports
        the action's outcome; the ledger is read only for a token of another name."""
        if identity.name == executor:  # names are unique, and a token's standing never changes
            return True
        recorded = self.ledger.entry(proposal_seq).body["executor"]
        return identity.standing == (recorded["owner"], recorded["role"], recorded["workflow"])

    def judge(
        self,
        identity: Identity,
        proposal: Proposal,
        policy: ActivePolicy,
        moment: dt.datetime,
        *,
        admitted: str | None = None,
        admitted_history: dict[str, Any] | None = None,
    ) -> Judgement:
        """Steps 3 to 6 (permit, classify, evaluate, decide) for a validated proposal, with the
        trace that shows them. Also re-evaluates a held proposal under a new bundle:
        ``admitted`` is then the case type it was decided as, and a proposal the new bundle no
        longer takes is a recorded rejection instead of a 422; it is decided with the history
        its first decision recorded (``admitted_history``), as of when it was proposed."""
        now = format_time(moment)
        recorded = _recorded_proposal(proposal)
        permitted = permit(policy.permitter, identity, proposal, admitted=admitted is not None)
        classification, refused = classify_admitted(
            policy, proposal, classify_input(recorded, identity, now), admitted
        )
        case_type = classification.case_type
        level, level_source = self.autonomy.level(policy.bundle, proposal.workflow, case_type)
        stats = self.autonomy.stats(policy.bundle, proposal.workflow, case_type, level, moment)
        history = (
            admitted_history
            if admitted is not None
            else self._history(identity, recorded, policy, case_type, moment)
        )
        input_ = rego_input(recorded, identity, case_type, level, stats, now, history)
        rego = None
        if permitted.allowed and refused is None:
            rego = evaluate(policy.engine, proposal.workflow, input_)
        decision = decide(permitted, rego, level, refused)
        package = package_of(proposal.workflow)
        rules = ("case_type", "deny", "hold") if classification.source == "classified" else ()
        trace = Trace(
            casbin=CasbinTrace.model_validate(permitted.trace()),
            rego=RegoTrace(
                engine=policy.engine.name,
                version=policy.engine.version,
                query=[f"{package}.{rule}" for rule in rules or ("deny", "hold")],
                input_digest=_input_digest(input_),
                output=None if rego is None else _normalised(rego),
            ),
            autonomy=AutonomyTrace(
                level=level,
                name=LEVEL_NAMES[level],
                source=level_source,
                case_type=case_type,
                case_type_source=classification.source,
            ),
            bundle_digest=policy.bundle.digest,
            decided_at=now,
            recommendation=decision.recommendation,
        )
        approval = None
        if decision.verdict == "hold":
            config = policy.bundle.workflows[proposal.workflow]
            approval = ApprovalRef(
                id=self.new_id("apr"),
                quorum=config.quorum(case_type),
                expires_at=format_time(moment + dt.timedelta(hours=config.approval_ttl_hours)),
            )
        return Judgement(decision, trace, stats, approval, recorded, case_type, history)

    def _history(
        self,
        identity: Identity,
        recorded: dict[str, Any],
        policy: ActivePolicy,
        case_type: str,
        moment: dt.datetime,
    ) -> dict[str, Any] | None:
        """``input.history`` for a fresh decision; the tables unreadable fail closed."""
        if self.history is None:
            return None
        terms = self.autonomy.terms(policy.bundle, recorded["workflow"], case_type)
        window = (terms.window_decisions, terms.window_days)
        try:
            return self.history.signals(identity.name, recorded, case_type, window, moment)
        except sa.exc.SQLAlchemyError as exc:
            raise DecisionUnavailable(f"the history signals cannot be read: {exc}") from exc

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
            "warnings": [r.model_dump() for r in decision.warnings],
            "trace": trace.model_dump(),
            "approval": None if approval is None else approval.model_dump(),
            "execution": None if execution is None else execution.model_dump(),
        }
        autonomy = self.autonomy
        # The audit sample is drawn now, by the action id, and recorded with the decision.
        audit = autonomy.audit(
            policy.bundle,
            proposal.workflow,
            judgement.case_type,
            trace.autonomy.level,
            decision.verdict,
            action_id,
        )
        decision_body = answer | {"stats": judgement.stats}
        if judgement.history is not None:
            decision_body["history"] = judgement.history
        if audit is not None:
            decision_body["audit"] = audit
        records = [
            Record("proposal", identity.name, action_id, proposal_body),
            Record("decision", "mandate", action_id, decision_body),
        ]
        if decision.verdict == "execute" and execution and execution.adapter == "callback":
            # Handed to the executor in the decision's own transaction: nothing for the
            # dispatcher to claim, no second write competing for the ledger's lock.
            records.append(Record("execution", "mandate", action_id, handover(action_id)))
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
                audit=audit,
                figures=autonomy.figures is not None,
            )

        try:
            appended = await self.ledger.append_many_async(records, rows=rows)
        except LedgerError as exc:
            try:
                raced = self._recorded((identity.owner, proposal.idempotency_key), digest, identity)
            except sa.exc.SQLAlchemyError:
                raced = None  # the database is down too: the ledger's failure is the reason
            if raced is not None:
                return raced
            raise DecisionUnavailable(f"the ledger did not record the decision: {exc}") from exc
        autonomy.decided(
            proposal.workflow,
            judgement.case_type,
            decision.verdict,
            warned=bool(decision.warnings),
        )
        if self.history is not None:
            self.history.decided(
                identity.name, judgement.recorded, judgement.case_type, decision.verdict
            )
        verdict = Verdict(
            action_id=action_id,
            verdict=decision.verdict,
            reasons=decision.reasons,
            warnings=decision.warnings,
            trace=trace,
            ledger=_ledger_ref(appended[0].seq, appended[1].seq, appended[1].leaf_hash.hex()),
            approval=approval,
            execution=execution,
        )
        if decision.verdict == "execute" and len(records) == 2 and self.on_execute is not None:
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
        rule: [r.model_dump(exclude={"source"}) for r in _policy_reasons(getattr(rego, rule))]
        for rule in ("deny", "hold", "warn")
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


def _conflict(key: str, *, other_standing: bool = False) -> Conflict:
    """The 409 for a key used before. It names no action: several tokens share an owner's
    keys, and only those of the proposer's standing may learn what a key was used for."""
    used = (
        "by another token of your owner, with another role or workflow binding"
        if other_standing
        else "for a different proposal"
    )
    return Conflict(f"idempotency key {key!r} was used {used}; use a new key for a new proposal")


# Built once: constructing and cache-keying a SQLAlchemy select per proposal costs more than
# running it.
_BY_IDEMPOTENCY_KEY = sa.select(
    ACTIONS.c.request_digest,
    ACTIONS.c.executor,
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
    *,
    audit: dict[str, Any] | None = None,
    figures: bool = True,
) -> list[tuple[sa.Table, dict[str, Any]]]:
    """The gateway's rows, written in the ledger's transaction: both land or neither does.

    With ``figures``, the action's row of measured figures; with an ``audit`` that sampled it,
    its pending audit."""
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
                "case_type": judgement.case_type,
                "action_type": proposal.action_type,
                "verdict": verdict,
                "status": _STATUS[verdict],
                "proposal_seq": appended[0].seq,
                "decision_seq": appended[1].seq,
                "decision_leaf": appended[1].leaf_hash.hex(),
                "response": stored,
                "created_at": created,
                "resource_digest": resource_digest(proposal.resource),
            },
        )
    ]
    for entry, kind in zip(appended, ("proposal", "decision", "execution"), strict=False):
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
        intent = intent_row(action_id, routing, identity.name, proposal.workflow, created)
        if len(appended) == 3:  # handed over to the executor with the decision
            intent |= {"status": "awaiting_outcome", "attempts": 1}
        rows.append((INTENTS, intent))
    level = judgement.trace.autonomy.level
    if figures:
        row = figures_row(
            action_id,
            proposal.workflow,
            judgement.case_type,
            appended[1].seq,
            judgement.trace.decided_at,
            level,
            verdict,
            judgement.decision.recommendation,
            warned=bool(judgement.decision.warnings),
            amount=amount_of(proposal.params),
        )
        rows.append((FIGURES, row))
    if audit is not None and audit["sampled"]:
        row = audit_row(
            action_id,
            proposal.workflow,
            judgement.case_type,
            level,
            audit["rate_bp"],
            created,
            appended[1].seq,
            identity.owner,
            approval_summary(identity, proposal, judgement),
        )
        rows.append((AUDITS, row))
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
        "case_type": judgement.case_type,
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
