"""The steps of a decision, each a function you can name, and ``judge``, the one orchestration
of them that every decision runs (live, re-evaluated, replayed, shadowed or a decision case):

    authenticate → parse → validate → permit → classify → evaluate → decide → record →
    dispatch | hold | reject

``authenticate`` is ``gateway.identity``'s and ``parse`` the HTTP edge's
(``gateway.api.strict_json``); ``record`` and what follows are ``gateway.decision.decider``'s.
Nothing here writes: the same inputs and bundle always give the same answer, which is what
makes a replay of the whole ledger with the bundles that decided it change no verdict.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from gateway.autonomy.levels import LEVEL_NAMES
from gateway.decision.personal import (
    INPUT_MARK,
    Personal,
    PersonalDataErased,
    find_marks,
    find_personal,
    masked,
    withhold_reasons,
    withhold_rego,
)
from gateway.errors import DecisionUnavailable, Forbidden, InvalidInput
from gateway.identity import Identity
from gateway.policy.active import ActivePolicy
from gateway.policy.bundle import WorkflowConfig
from gateway.policy.permit import PermitResult, Permitter
from gateway.policy.rego import EngineError, RegoEngine, RegoResult
from gateway.schemas import Proposal, Reason, VerdictName
from ledger.entry import canonical_json
from ledger.errors import EntryError

__all__ = [
    "UNKNOWN",
    "CaseTypeSource",
    "Classification",
    "Decision",
    "Judged",
    "Signals",
    "Standing",
    "Unknown",
    "admit",
    "amount_problem",
    "classify",
    "classify_input",
    "decide",
    "evaluate",
    "input_digest",
    "judge",
    "permit",
    "recorded_proposal",
    "rego_input",
    "rego_output",
    "request_digest",
    "validate",
]

_DECIMAL = re.compile(r"(-?)(0|[1-9][0-9]{0,17})(\.[0-9]{1,18})?")


# -- the steps -------------------------------------------------------------------------------


def validate(proposal: Proposal, policy: ActivePolicy) -> None:
    """Step 2: beyond the schema, is this a proposal the ledger and the policy can take? The
    workflow and its action type are the bundle's (``data.json``), a claimed case type is one
    that action type may be, an amount is a decimal string within the workflow's scale, and no
    value poses as a sealed one. (Its personal data is checked by ``judge``.)"""
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
        value = getattr(proposal, name)
        try:
            encoded = canonical_json(value, name)
        except EntryError as exc:
            if exc.path != "params.amount":
                errors.append((exc.path, exc.problem))
            continue
        mark = find_marks(encoded, value, name)
        if mark is not None:
            errors.append((mark, "is the ledger's mark of a sealed value, not a proposal's"))
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
    if not admitted:
        admit(permitter, identity, proposal)
    elif identity.workflow is not None and identity.workflow != proposal.workflow:
        raise _bound_elsewhere(identity, proposal)
    try:
        return permitter.permit(identity.role, proposal.workflow, proposal.action_type, "propose")
    except Exception as exc:
        raise DecisionUnavailable(f"Casbin failed: {exc}", cause="casbin") from exc


def admit(permitter: Permitter, identity: Identity, proposal: Proposal) -> None:
    """Step 3's refusals outright (Forbidden): a role that proposes nothing at all, or a token
    bound to another workflow. Checked before an idempotency key is looked up, so a retry meets
    them as its first attempt did."""
    if identity.role not in permitter.roles_with_act("propose"):
        raise Forbidden(f"role {identity.role!r} may not propose actions")
    if identity.workflow is not None and identity.workflow != proposal.workflow:
        raise _bound_elsewhere(identity, proposal)


def _bound_elsewhere(identity: Identity, proposal: Proposal) -> Forbidden:
    return Forbidden(
        f"token {identity.name!r} is bound to workflow {identity.workflow!r}, "
        f"not {proposal.workflow!r}"
    )


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
        raise DecisionUnavailable(str(exc), cause="rego") from exc
    except Exception as exc:
        raise DecisionUnavailable(f"the Rego engine failed: {exc}", cause="rego") from exc
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
    ``history`` (``gateway.decision.history``) is left out for decisions recorded without it."""
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
        raise DecisionUnavailable(str(exc), cause="rego") from exc
    except Exception as exc:
        raise DecisionUnavailable(f"the Rego engine failed: {exc}", cause="rego") from exc


@dataclass(frozen=True)
class Decision:
    """A verdict, its reasons, and what the gateway would have done without the level-1 rule;
    ``warnings``: the policy's advisories, which never change the verdict."""

    verdict: VerdictName
    reasons: list[Reason]
    recommendation: VerdictName
    warnings: list[Reason] = field(default_factory=list)


def decide(
    permitted: PermitResult,
    rego: RegoResult | None,
    level: int,
    refused: InvalidInput | None = None,
) -> Decision:
    """Step 6: reject if Casbin denies or the policy denies; hold if the policy holds or the
    level is 1 (the gateway's own rule, whatever the policy says); otherwise execute. A held
    proposal that a new bundle no longer takes, or whose personal data was erased
    (``refused``), is rejected. The policy's ``warn`` reasons go beside the verdict, whatever
    it is, and never change it."""
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
    if isinstance(refused, PersonalDataErased):
        by = sorted({message for _, message in refused.errors})
        reason = Reason(
            code="personal_data_erased",
            message=f"its personal data ({', '.join(field for field, _ in refused.errors)}) was "
            f"{' and '.join(by)}: it cannot be decided again",
            source="gateway",
        )
        return Decision("reject", [reason], "reject")
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
    return [Reason(**_reason_fields(item), source="rego") for item in items]


def _reason_fields(item: dict[str, Any]) -> dict[str, str]:
    """A policy's reason as the gateway reads it: a code (``unnamed`` if it gave none) and a
    message (its code if it gave none)."""
    return {
        "code": str(item.get("code", "unnamed")),
        "message": str(item.get("message", item.get("code", ""))),
    }


# -- the one orchestration -------------------------------------------------------------------


class Unknown:
    """Not looked for yet (``judge``'s ``personal``): None says there is none."""


UNKNOWN = Unknown()

# The level a case type is decided at, where that level came from, and the figures a decision
# at it sees: the live autonomy book's, or what a recorded decision recorded.
Standing = Callable[[str], tuple[int, str, dict[str, int]]]
# The history signals a decision of a case type sees (``input.history``), or None for none.
Signals = Callable[[str], dict[str, Any] | None]


@dataclass(frozen=True)
class Judged:
    """What the steps reached for one proposal: each step's answer, and the decision."""

    permitted: PermitResult
    classification: Classification
    level: int
    level_source: str
    stats: dict[str, int]
    history: dict[str, Any] | None
    input: dict[str, Any]
    rego: RegoResult | None
    decision: Decision
    personal: Personal | None = None

    @property
    def case_type(self) -> str:
        """The case type the bundle decided on."""
        return self.classification.case_type


def judge(
    policy: ActivePolicy,
    identity: Identity,
    proposal: Proposal,
    recorded: dict[str, Any],
    now: str,
    standing: Standing,
    signals: Signals | None = None,
    *,
    admitted: str | None = None,
    personal: Personal | Unknown | None = UNKNOWN,
) -> Judged:
    """Steps 3 to 6 for a validated proposal (``recorded`` is it as the ledger keeps it):
    permit, classify, evaluate at the case type's level (``standing`` says which) with its
    history signals (``signals``), decide. Its personal data (``gateway.decision.personal``) is
    found first, and no reason or warning quotes it.

    A held proposal re-evaluated under a new bundle is ``admitted`` (the case type it was
    decided as): Casbin then answers even for a role that proposes nothing any more, and what
    the new bundle no longer takes is a rejection (``not_taken``) instead of a 422.
    ``personal``: what ``find_personal`` found in ``recorded`` already, if the caller asked.
    """
    permitted = permit(policy.permitter, identity, proposal, admitted=admitted is not None)
    refused: InvalidInput | None = None
    try:
        if isinstance(personal, Unknown):
            config = policy.bundle.workflows.get(proposal.workflow)
            personal = None if config is None else find_personal(config, recorded)
        if admitted is not None:
            validate(proposal, policy)
        classification = classify(
            policy.engine,
            policy.bundle.workflows[proposal.workflow],
            proposal,
            classify_input(recorded, identity, now),
            admitted=admitted,
        )
    except InvalidInput as exc:
        if admitted is None:
            raise
        refused, classification = exc, Classification(admitted, "claimed")
        if isinstance(personal, Unknown):
            personal = None
    level, level_source, stats = standing(classification.case_type)
    history = None if signals is None else signals(classification.case_type)
    input_ = rego_input(recorded, identity, classification.case_type, level, stats, now, history)
    rego = None
    quoted = () if personal is None else personal.quoted
    if permitted.allowed and refused is None:
        rego = withhold_rego(evaluate(policy.engine, proposal.workflow, input_), quoted)
    decision = decide(permitted, rego, level, refused)
    if quoted:
        reasons = withhold_reasons(decision.reasons, quoted)
        warnings = withhold_reasons(decision.warnings, quoted)
        decision = Decision(decision.verdict, reasons, decision.recommendation, warnings)
    return Judged(
        permitted,
        classification,
        level,
        level_source,
        stats,
        history,
        input_,
        rego,
        decision,
        personal,
    )


# -- what is recorded of a proposal and its input ---------------------------------------------


def recorded_proposal(proposal: Proposal) -> dict[str, Any]:
    """The proposal as the ledger keeps it: confidence as a decimal string (entries hold no
    floats); the exact digits the executor sent survive as ``repr`` of the parsed float."""
    data = proposal.model_dump()
    if proposal.confidence is not None:
        data["confidence"] = repr(proposal.confidence)
    return data


def request_digest(
    proposal: Proposal | dict[str, Any],
    personal: Personal | None = None,
    keyed: Callable[[str], str] | None = None,
) -> str:
    """SHA-256 of the proposal as recorded (``recorded_proposal``, or that already): what an
    idempotency key's retry must match. Its sealed values count by their keyed digest
    (``keyed``, the ledger's subject key): a plain hash over them would outlive their erasure
    as a way to test a guess."""
    recorded = recorded_proposal(proposal) if isinstance(proposal, Proposal) else proposal
    if personal is not None and keyed is not None:
        recorded = masked(recorded, personal.paths, lambda v: keyed(canonical_json(v).decode()))
    return hashlib.sha256(canonical_json(recorded, "proposal")).hexdigest()


def input_digest(input_: dict[str, Any], sealed: tuple[str, ...] = ()) -> str:
    """SHA-256 of the Rego input as recorded: canonical JSON with confidence as the decimal
    string the ledger keeps (entries hold no floats), so replay recomputes the same digest.
    The proposal's ``sealed`` fields hold ``INPUT_MARK``: the entry's commitments stand for
    their values, which the digest must not let anyone test a guess against."""
    proposal = input_["proposal"]
    confidence = proposal["confidence"]
    kept = {**proposal, "confidence": None if confidence is None else repr(confidence)}
    if sealed:
        kept = masked(kept, sealed, lambda _: INPUT_MARK)
    return hashlib.sha256(canonical_json({**input_, "proposal": kept}, "input")).hexdigest()


def rego_output(rego: RegoResult) -> dict[str, Any]:
    """What the policy said, as a decision's trace records it."""
    return {
        rule: [_reason_fields(item) for item in getattr(rego, rule)]
        for rule in ("deny", "hold", "warn")
    }
