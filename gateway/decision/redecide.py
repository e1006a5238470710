"""Deciding again from recorded inputs: what replay, shadow mode and decision cases share.

A decision names every input it was made from: the proposal and the executor (the ``proposal``
entry), and the autonomy level, the figures (``stats``), the history signals (``history``) and
the clock (``decided_at``) (the ``decision`` entry). ``redecide`` validates them and runs
``judge`` (``gateway.decision.steps``), the one orchestration the live decider runs too: permit
(Casbin), classify (the case type, by the bundle), evaluate (Rego at the recorded level, with
the recorded history), decide (the level-1 rule included). Nothing is written, and no input is
taken from anywhere but the ``Inputs`` given, so the same inputs and bundle always give the same
answer: that is what makes a replay of the whole ledger with the bundle that decided it change
no verdict (``tests/policies/test_replay.py`` checks it over a realistic history).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import ValidationError

from gateway.autonomy.levels import LEVEL_NAMES
from gateway.decision.personal import quoted_in, withhold_reasons
from gateway.decision.steps import input_digest, judge, recorded_proposal, validate
from gateway.errors import DecisionUnavailable, Forbidden, InvalidInput
from gateway.identity import Identity
from gateway.policy.active import ActivePolicy
from gateway.schemas import Proposal, Reason

__all__ = ["IDENTITY_FIELDS", "Inputs", "Outcome", "Redecision", "code_changes", "redecide"]

# "refused": the gateway would answer 403 or 422 and record nothing; "error": it would fail
# closed (503), a policy engine failing on this input.
Outcome = Literal["execute", "hold", "reject", "refused", "error"]
IDENTITY_FIELDS = ("token_id", "name", "role", "workflow", "owner")


@dataclass(frozen=True)
class Inputs:
    """Everything one decision depends on. ``proposal`` is as the ledger keeps it (confidence
    a decimal string); ``admitted`` is true for a re-evaluation of a proposal admitted before
    (Casbin then answers even for a role that proposes nothing any more). ``level`` None is the
    initial level, in the bundle, of the case type the bundle classifies the proposal as (a
    decision case that names no level)."""

    identity: Identity
    proposal: dict[str, Any]
    level: int | None
    stats: dict[str, Any]
    now: str
    admitted: bool = False
    case_type: str | None = None  # as recorded: the case type the decision was made as
    history: dict[str, Any] | None = None  # input.history; None where none was recorded
    sealed: tuple[str, ...] = ()  # as recorded: the proposal's fields the ledger sealed

    @classmethod
    def recorded(cls, proposal_body: Mapping[str, Any], decision_body: Mapping[str, Any]) -> Inputs:
        """The inputs of a recorded decision: its proposal entry's body, its sealed values put
        back (``Ledger.reveal``), and its own body."""
        executor = proposal_body["executor"]
        trace = decision_body["trace"]
        proposal = dict(proposal_body["proposal"])
        return cls(
            identity=Identity(**{name: executor[name] for name in IDENTITY_FIELDS}),
            proposal=proposal,
            level=int(trace["autonomy"]["level"]),
            stats=dict(decision_body.get("stats") or {}),
            now=str(trace["decided_at"]),
            admitted=bool(decision_body.get("reevaluated")),
            case_type=str(trace["autonomy"].get("case_type") or proposal["case_type"]),
            history=decision_body.get("history"),
            sealed=tuple(proposal_body.get("sealed", ())),
        )

    @classmethod
    def of(
        cls,
        identity: Identity,
        proposal: Proposal,
        level: int | None,
        stats: dict[str, Any],
        now: str,
        *,
        admitted: bool = False,
        history: dict[str, Any] | None = None,
    ) -> Inputs:
        """Inputs for a proposal that was never recorded (a decision case)."""
        return cls(
            identity, recorded_proposal(proposal), level, stats, now, admitted, history=history
        )


@dataclass(frozen=True)
class Redecision:
    """What the policy decides on the inputs: a verdict with its reasons, or why none."""

    verdict: Outcome
    reasons: list[Reason]
    recommendation: str | None = None
    error: str | None = None
    input_digest: str | None = None
    case_type: str | None = None
    level: int | None = None
    warnings: list[Reason] = field(default_factory=list)

    @property
    def codes(self) -> list[str]:
        """The reason codes, sorted."""
        return sorted(r.code for r in self.reasons)

    @property
    def warning_codes(self) -> list[str]:
        """The warnings' codes, sorted."""
        return sorted(r.code for r in self.warnings)

    def to_json(self) -> dict[str, Any]:
        """As a report shows it."""
        return {
            "verdict": self.verdict,
            "reasons": [r.model_dump() for r in self.reasons],
            "warnings": [r.model_dump() for r in self.warnings],
            "recommendation": self.recommendation,
            "error": self.error,
        }


def code_changes(before: Iterable[str], after: Iterable[str]) -> tuple[list[str], list[str]]:
    """The reason codes ``after`` adds to ``before``, and those it drops, each sorted (a code
    given twice counts twice)."""
    was, now = Counter(before), Counter(after)
    return sorted((now - was).elements()), sorted((was - now).elements())


def _proposal(recorded: Mapping[str, Any]) -> Proposal:
    confidence = recorded.get("confidence")
    return Proposal.model_validate(
        {**recorded, "confidence": None if confidence is None else float(confidence)}
    )


def redecide(policy: ActivePolicy, inputs: Inputs) -> Redecision:
    """Decide ``inputs`` under ``policy`` as the gateway would; never raises for what the
    gateway would refuse (``refused``) or fail closed on (``error``)."""
    if inputs.level is not None and inputs.level not in LEVEL_NAMES:
        return Redecision("refused", [], error=f"autonomy level {inputs.level} is not 1 to 4")
    config = policy.bundle.workflows.get(str(inputs.proposal.get("workflow")))

    def standing(case_type: str) -> tuple[int, str, dict[str, int]]:
        if inputs.level is not None:
            return inputs.level, "recorded", inputs.stats
        level = config.initial_level(case_type) if config is not None else 1
        if level not in LEVEL_NAMES:
            raise InvalidInput([("level", f"initial level {level} of {case_type} is not 1 to 4")])
        return level, "bundle initial level", inputs.stats

    try:
        proposal = _proposal(inputs.proposal)
        if not inputs.admitted:
            validate(proposal, policy)
        judged = judge(
            policy,
            inputs.identity,
            proposal,
            inputs.proposal,
            inputs.now,
            standing,
            lambda _case_type: inputs.history,
            admitted=inputs.case_type if inputs.admitted else None,
        )
    except ValidationError as exc:
        return Redecision("refused", [], error=f"not a valid proposal: {exc}")
    except (InvalidInput, Forbidden) as exc:
        return Redecision("refused", [], error=exc.detail)
    except DecisionUnavailable as exc:
        return Redecision("error", [], error=exc.detail)
    decision = judged.decision
    # What the recording sealed stays withheld under a bundle that names other fields.
    reasons = withhold_reasons(decision.reasons, quoted_in(inputs.proposal, inputs.sealed))
    return Redecision(
        decision.verdict,
        reasons,
        decision.recommendation,
        input_digest=input_digest(judged.input, inputs.sealed),
        case_type=judged.case_type,
        level=judged.level,
        warnings=decision.warnings,
    )
