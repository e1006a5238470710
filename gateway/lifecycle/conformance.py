"""Conformance: does a bundle decide the same on the in-process engine as on OPA itself?

A security team writes Rego expecting OPA's semantics; the gateway evaluates it with regorus.
``check_conformance`` runs one bundle through both, the gateway's own steps around each
(``gateway.decision.redecide``: validate, Casbin, classify, evaluate, decide), and compares
everything a person would see: the verdict, each reason's code, message and source, the
warnings, the recommendation, the case type and the level. It runs

1. the Rego unit tests (``rego/*_test.rego``) on both engines: each must pass or fail alike;
2. every decision case (``tests/*.yaml``);
3. inputs generated around every threshold of the bundle's data, from each case's proposal and
   from one plain proposal per listed action type: amounts just below, at and just above each
   threshold at the workflow's largest accepted scale (``amount_scale``), the smallest and the
   largest amount accepted, confidences at, just below and just above each floor (the
   neighbouring 64-bit floats) and a few others (none, 0, 1, tiny ones whose digits engines
   print differently), and history signals (``input.history``) around the data's whole-number
   thresholds and the proposal's amount; each at every level.

Any difference is a disagreement naming the rule (its code, module and line) and the input
(as a decision case would give it), so the bundle can be fixed where engines read it apart: a
comparison of decimals that 64-bit floats cannot tell apart, a number printed with ``%v``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation, localcontext
from typing import Any

import orjson

from gateway.autonomy.figures import ZERO_FIGURES
from gateway.decision.history import ZERO_HISTORY, amount_of
from gateway.decision.redecide import Inputs, Redecision, redecide
from gateway.decision.steps import amount_problem
from gateway.identity import Identity
from gateway.lifecycle.checks import case_inputs
from gateway.policy.active import ActivePolicy
from gateway.policy.bundle import Bundle, WorkflowConfig
from gateway.policy.cases import DEFAULT_NOW, Case, load_cases
from gateway.policy.opa import OpaEngine
from gateway.policy.permit import Permitter
from gateway.policy.rego import RegoRule, RegorusEngine, package_of
from gateway.wording import counted

__all__ = ["Conformance", "Disagreement", "check_conformance", "describe_conformance"]

# Confidences every bundle is probed with besides its floors: none, the ends, the middle, and
# small ones whose shortest digits engines print differently (0.00001 or 1e-05).
_CONFIDENCES: tuple[float | None, ...] = (None, 0.0, 1.0, 0.5, 1e-05, 1e-07, 0.0001)
# Keys of a workflow's data that hold no thresholds (the gateway's own settings).
_NOT_THRESHOLDS = frozenset(
    {"action_types", "case_types", "autonomy", "amount_scale", "signed_amounts",
     "approval_ttl_hours", "description"}
)  # fmt: skip
_LEVELS = (1, 2, 3, 4)


@dataclass(frozen=True)
class Disagreement:
    """One input the engines decide differently: what differs, by rule, and the input."""

    origin: str  # "tests/verdicts.yaml #3 (…)", "generated", "Rego test rego/x_test.rego"
    differences: tuple[str, ...]
    input: dict[str, Any]  # as a decision case gives it: executor, level, proposal, figures
    regorus: dict[str, Any]
    opa: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"differences": list(self.differences)}


@dataclass
class Conformance:
    """What a conformance run found."""

    bundle: Bundle
    regorus: str = ""  # each engine's name and version
    opa: str = ""
    tests: int = 0
    cases: int = 0
    generated: int = 0
    disagreements: list[Disagreement] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        """Whether the engines agreed on everything."""
        return not self.disagreements

    def to_json(self) -> dict[str, Any]:
        return {
            "digest": self.bundle.digest,
            "engines": {"regorus": self.regorus, "opa": self.opa},
            "passed": self.passed,
            "rego_tests": self.tests,
            "cases": self.cases,
            "generated": self.generated,
            "disagreements": [d.to_json() for d in self.disagreements],
            "seconds": round(self.seconds, 3),
        }


def check_conformance(
    bundle: Bundle, *, clock: Callable[[], float] = time.perf_counter
) -> Conformance:
    """Run the bundle on regorus and on OPA's evaluator and compare, as the module docstring
    says. EngineError if either engine cannot load the bundle (or OPA's is not installed);
    CaseError if a case file cannot be used."""
    started = clock()
    permitter = Permitter(bundle.casbin_model, bundle.casbin_policy)
    local = RegorusEngine(bundle)
    reference = OpaEngine(bundle)
    policies = {
        "regorus": ActivePolicy(bundle, permitter, local),
        "opa": ActivePolicy(bundle, permitter, reference),
    }
    report = Conformance(bundle, regorus=f"regorus {local.version}", opa=reference.version)
    rules = local.rules()
    report.tests, disagreements = _unit_tests(bundle)
    report.disagreements += disagreements
    cases = [case for path, text in sorted(bundle.cases.items()) for case in load_cases(path, text)]
    seen: set[bytes] = set()
    for case in cases:
        inputs = case_inputs(case)
        report.cases += 1
        seen.add(_key(inputs))
        _compare(report, policies, rules, case.where, inputs)
    for inputs in generate_inputs(bundle, cases, permitter):
        key = _key(inputs)
        if key in seen:
            continue
        seen.add(key)
        report.generated += 1
        _compare(report, policies, rules, "generated", inputs)
    report.seconds = clock() - started
    return report


def _unit_tests(bundle: Bundle) -> tuple[int, list[Disagreement]]:
    """Step 1: each Rego unit test passes on both engines or fails on both."""
    if not bundle.tests:
        return 0, []
    ours = {(t.module, t.name): t for t in RegorusEngine(bundle, include_tests=True).run_tests()}
    theirs = {(t.module, t.name): t for t in OpaEngine(bundle, include_tests=True).run_tests()}
    found = []
    for key in sorted(set(ours) | set(theirs)):
        a, b = ours.get(key), theirs.get(key)
        if a is not None and b is not None and a.passed == b.passed:
            continue
        said = {
            name: "missing" if t is None else ("passes" if t.passed else f"fails ({t.error})")
            for name, t in (("regorus", a), ("opa", b))
        }
        found.append(
            Disagreement(
                origin=f"Rego test {key[0]}",
                differences=(f"{key[1]}: regorus {said['regorus']}, OPA {said['opa']}",),
                input={},
                regorus={"test": said["regorus"]},
                opa={"test": said["opa"]},
            )
        )
    return len(ours), found


def _key(inputs: Inputs) -> bytes:
    """The same inputs give the same key (a case and a generated input can coincide)."""
    return orjson.dumps(dataclasses.asdict(inputs), option=orjson.OPT_SORT_KEYS)


def _compare(
    report: Conformance,
    policies: dict[str, ActivePolicy],
    rules: list[RegoRule],
    origin: str,
    inputs: Inputs,
) -> None:
    got = {name: redecide(policy, inputs) for name, policy in policies.items()}
    package = package_of(str(inputs.proposal.get("workflow"))).removeprefix("data.")
    differences = _differences(
        got["regorus"], got["opa"], [r for r in rules if r.package == package]
    )
    if differences:
        report.disagreements.append(
            Disagreement(
                origin=origin,
                differences=tuple(differences),
                input=_as_case(inputs),
                regorus=_seen(got["regorus"]),
                opa=_seen(got["opa"]),
            )
        )


def _seen(got: Redecision) -> dict[str, Any]:
    return got.to_json() | {"case_type": got.case_type, "level": got.level}


def _as_case(inputs: Inputs) -> dict[str, Any]:
    """The input as a decision case would give it (only the figures that are not 0)."""
    proposal = dict(inputs.proposal)
    confidence = proposal.get("confidence")
    proposal["confidence"] = None if confidence is None else float(confidence)
    return {
        "executor": inputs.identity.role,
        "level": inputs.level,
        "now": inputs.now,
        "stats": {k: v for k, v in inputs.stats.items() if v},
        "history": inputs.history,
        "proposal": proposal,
    }


def _differences(a: Redecision, b: Redecision, rules: list[RegoRule]) -> list[str]:
    """What differs between the two engines' decisions, each naming the rule of the workflow's
    package (``rules``) it comes from."""
    found = []
    if a.verdict != b.verdict:
        found.append(
            f"verdict: regorus {a.verdict}, OPA {b.verdict}"
            + (f" ({a.error or b.error})" if "error" in (a.verdict, b.verdict) else "")
        )
    for kind, ours, theirs in (
        ("reason", a.reasons, b.reasons),
        ("warning", a.warnings, b.warnings),
    ):
        left = {(r.code, r.source): r.message for r in ours}
        right = {(r.code, r.source): r.message for r in theirs}
        for code, source in sorted(set(left) | set(right)):
            where = _rule_of(code, source, kind, rules)
            if (code, source) not in right:
                found.append(f"{where}: only regorus gives it ({left[code, source]!r})")
            elif (code, source) not in left:
                found.append(f"{where}: only OPA gives it ({right[code, source]!r})")
            elif left[code, source] != right[code, source]:
                found.append(
                    f"{where}: message {left[code, source]!r} (regorus) vs "
                    f"{right[code, source]!r} (OPA)"
                )
    for name in ("recommendation", "case_type", "level"):
        if getattr(a, name) != getattr(b, name):
            found.append(f"{name}: regorus {getattr(a, name)}, OPA {getattr(b, name)}")
    return found


def _rule_of(code: str, source: str, kind: str, rules: list[RegoRule]) -> str:
    """``hold low_confidence (rego/claims.rego:52)``: the rules that give this code."""
    if source != "rego":
        return f"{kind} {code} ({source})"
    names = ("warn",) if kind == "warning" else ("deny", "hold")
    places = [
        f"{r.label} ({r.module}:{r.line})" for r in rules if r.code == code and r.name in names
    ]
    return ", ".join(places) or f"{kind} {code}"


# -- generated inputs -------------------------------------------------------------------------


def generate_inputs(bundle: Bundle, cases: list[Case], permitter: Permitter) -> Iterator[Inputs]:
    """Inputs around every threshold of the bundle's data, from each case's proposal and one
    plain proposal per listed action type, at every level (see the module docstring)."""
    templates = [case_inputs(case) for case in cases]
    templates += _plain_proposals(bundle, permitter)
    varied: set[tuple[str, Any, str]] = set()
    for template in templates:
        config = bundle.workflows.get(template.proposal.get("workflow", ""))
        if config is None:
            continue
        data = bundle.data["workflows"].get(config.name, {})
        thresholds = sorted(set(_thresholds(data)))
        amounts = _amounts(thresholds, config)
        confidences = _confidences(thresholds)
        # History variants once per executor role, action type and amount: the other cases of
        # those differ in what the amount and confidence variants already cover.
        kind = (
            template.identity.role,
            template.proposal.get("action_type"),
            str(template.proposal.get("params")),
        )
        histories = (
            []
            if kind in varied
            else _histories(template, sorted(set(_whole_numbers(data))), config)
        )
        varied.add(kind)
        for level in _LEVELS:
            for amount in amounts:
                params = {**template.proposal.get("params", {}), "amount": amount}
                yield _with(template, level, params=params)
            for confidence in confidences:
                text = None if confidence is None else repr(confidence)
                yield _with(template, level, confidence=text)
            for history in histories:
                yield dataclasses.replace(template, level=level, history=history)


def _with(template: Inputs, level: int, **proposal: Any) -> Inputs:
    return dataclasses.replace(template, level=level, proposal={**template.proposal, **proposal})


def _plain_proposals(bundle: Bundle, permitter: Permitter) -> list[Inputs]:
    """One proposal per listed action type, by a role Casbin lets propose it."""
    found = []
    proposers = sorted(permitter.roles_with_act("propose"))
    for workflow, config in sorted(bundle.workflows.items()):
        for action_type, case_types in sorted(config.action_types.items()):
            role = next(
                (
                    r
                    for r in proposers
                    if permitter.permit(r, workflow, action_type, "propose").allowed
                ),
                proposers[0] if proposers else "nobody",
            )
            identity = Identity(
                token_id="probe",  # noqa: S106 - a name, not a secret
                name=f"{role}-probe",
                role=role,
                workflow=None,
                owner=f"{role}-probe",
            )
            proposal: dict[str, Any] = {
                "workflow": workflow,
                "action_type": action_type,
                "resource": "probe/1",
                "params": {},
                "case_type": case_types[0] if len(case_types) > 1 else None,
                "confidence": "0.95",
                "context": {},
                "idempotency_key": f"probe-{action_type}",
            }
            found.append(Inputs(identity, proposal, None, dict(ZERO_FIGURES), DEFAULT_NOW))
    return found


def _thresholds(data: Any, key: str = "") -> Iterator[Decimal]:
    """Every number in a workflow's data, written as a decimal string or as a JSON number,
    outside the gateway's own settings."""
    if key in _NOT_THRESHOLDS:
        return
    if isinstance(data, dict):
        for name, value in data.items():
            yield from _thresholds(value, name)
    elif isinstance(data, list):
        for value in data:
            yield from _thresholds(value)
    elif isinstance(data, bool):
        return
    elif isinstance(data, int | float | str):
        try:
            number = Decimal(str(data).strip())
        except InvalidOperation:
            return
        if number.is_finite():
            yield number


def _whole_numbers(data: Any, key: str = "") -> Iterator[int]:
    """Every whole JSON number in a workflow's data, outside the gateway's own settings."""
    if key in _NOT_THRESHOLDS or isinstance(data, bool):
        return
    if isinstance(data, dict):
        for name, value in data.items():
            yield from _whole_numbers(value, name)
    elif isinstance(data, list):
        for value in data:
            yield from _whole_numbers(value)
    elif isinstance(data, int):
        yield data


def _amounts(thresholds: list[Decimal], config: WorkflowConfig) -> list[str]:
    """Amounts the workflow accepts just below, at and just above each threshold, at its
    largest scale, and its smallest and largest amounts."""
    step = Decimal(1).scaleb(-config.amount_scale)
    largest = Decimal("9" * 18 + ("." + "9" * config.amount_scale if config.amount_scale else ""))
    found = []
    with localcontext() as exact:
        exact.prec = 80  # 18 digits before the point and 18 after, with room: never rounded
        candidates = {step, largest}
        for threshold in thresholds:
            candidates |= {threshold - step, threshold, threshold + step}
        for number in sorted(candidates):
            if number != number.quantize(step):
                continue  # a threshold finer than the scale: its neighbours stand for it
            text = f"{number.quantize(step):f}"
            if amount_problem(text, config) is None:
                found.append(text)
    return found


def _histories(template: Inputs, whole: list[int], config: WorkflowConfig) -> list[dict[str, Any]]:
    """``input.history`` around the data's whole numbers (``whole``: counts of executed amounts
    and of proposals in the last hour) and around the proposal's own amount (the 95th
    percentile just below, at and just above it), for a first action type and resource."""
    step = Decimal(1).scaleb(-config.amount_scale)
    amount = amount_of(template.proposal.get("params") or {})
    around = Decimal(amount) if amount is not None else Decimal(100)
    counts = sorted({n + d for n in whole for d in (-1, 0, 1) if n + d >= 0})
    found: list[dict[str, Any]] = [
        {**ZERO_HISTORY, "first_action_type": True},
        *({**ZERO_HISTORY, "proposals_last_hour": n} for n in counts),
    ]
    for n in counts:
        for p95 in (around - step, around, around + step):
            if p95 > 0:
                text = f"{p95.quantize(step):f}"
                amounts = {"count": n, "p95": text, "max": text}
                found.append({**ZERO_HISTORY, "first_resource": True, "amounts": amounts})
    return found


def _confidences(thresholds: list[Decimal]) -> list[float | None]:
    """Each floor between 0 and 1 and its neighbouring floats, and the usual others."""
    found: list[float | None] = list(_CONFIDENCES)
    for threshold in thresholds:
        if 0 <= threshold <= 1:
            floor = float(threshold)
            found += [math.nextafter(floor, 0.0), floor, math.nextafter(floor, 1.0)]
    unique: list[float | None] = []
    for value in found:
        if value not in unique and (value is None or 0 <= value <= 1):
            unique.append(value)
    return unique


def describe_conformance(report: Conformance) -> list[str]:
    """The conformance section of ``mandate policy test --engine opa``."""
    lines = [
        f"Engines: {report.regorus} against {report.opa}: {counted(report.tests, 'Rego test')}, "
        f"{counted(report.cases, 'decision case')} and "
        f"{counted(report.generated, 'generated input')} around the "
        f"data's thresholds, in {report.seconds:.1f} s",
    ]
    if report.passed:
        lines.append("  The engines agree on every one.")
        return lines
    lines.append(f"  {counted(len(report.disagreements), 'input')} decided differently:")
    for d in report.disagreements[:20]:
        lines.append(f"  DIFFER  {d.origin}")
        lines += [f"        {difference}" for difference in d.differences]
        if d.input:
            lines.append(f"        input {_compact(d.input)}")
    if len(report.disagreements) > 20:
        lines.append(f"  … and {len(report.disagreements) - 20} more (--json lists them all)")
    return lines


def _compact(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(", ", ": "))
