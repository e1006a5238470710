"""Checking a bundle before it decides anything: what ``mandate policy test`` runs and what
activation requires.

1. The bundle loads: its files, its data, its Casbin model and policy (asked once per workflow,
   so a matcher that cannot be evaluated shows here, not on the first proposal), and its Rego
   (parsed by regorus); every workflow in the data has its Rego package.
2. Its action types and Casbin agree: every action type ``data.json`` lists is one some role
   may propose, every Casbin ``propose`` line allows some listed action type, and every case
   type is one some action type may be (else no proposal could ever reach it).
3. Its Rego unit tests pass: every ``test_`` rule of ``rego/*_test.rego`` is true, as
   ``opa test`` runs them.
4. Its decision cases pass: each case in ``tests/*.yaml`` is decided by the gateway's own steps
   (``gateway.decision.redecide``: validate, Casbin, Rego at the level, the level-1 rule) and
   gives the expected verdict, reasons and recommendation.
5. Coverage: which rules fired (regorus coverage), in how many decision cases and whether in
   the unit tests; a rule that never fires is shown, not failed.

A step that cannot run (the bundle does not load, a case file is malformed) makes the check
``usable = False``: the CLI exits 2 on it, activation refuses it with a 422.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from gateway.autonomy.figures import ZERO_FIGURES
from gateway.decision.redecide import Inputs, Redecision, redecide
from gateway.identity import Identity
from gateway.policy.active import ActivePolicy
from gateway.policy.bundle import Bundle
from gateway.policy.cases import Case, CaseError, load_cases
from gateway.policy.opa import OpaEngine
from gateway.policy.permit import Permitter
from gateway.policy.rego import EngineError, RegoRule, RegorusEngine, RegoTestResult
from gateway.schemas import Proposal
from gateway.wording import counted

__all__ = ["BundleCheck", "CaseResult", "Problem", "RuleCoverage", "check_bundle", "describe"]

_LOCATION = re.compile(r" at (\S+?):\d+:\d+")


@dataclass(frozen=True)
class Problem:
    """Something wrong with the bundle: the file it is in, and what."""

    file: str
    message: str


@dataclass(frozen=True)
class CaseResult:
    """A decision case and what the gateway decided for it."""

    case: Case
    level: int | None  # None: the case was refused before a case type was decided
    got: Redecision
    failures: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass(frozen=True)
class RuleCoverage:
    """A rule and where it fired: in how many decision cases, and in the unit tests."""

    rule: RegoRule
    cases: int
    tests: bool

    @property
    def fired(self) -> bool:
        return self.cases > 0 or self.tests


@dataclass
class BundleCheck:
    """Everything ``check_bundle`` found."""

    bundle: Bundle
    problems: list[Problem] = field(default_factory=list)  # the check could not run
    mapping: list[Problem] = field(default_factory=list)  # action types, Casbin, case types
    rego_tests: list[RegoTestResult] = field(default_factory=list)
    cases: list[CaseResult] = field(default_factory=list)
    coverage: list[RuleCoverage] = field(default_factory=list)
    engine: str = "regorus"  # the engine of the Rego tests and decision cases (with its version)

    @property
    def usable(self) -> bool:
        """Whether every step could run."""
        return not self.problems

    @property
    def passed(self) -> bool:
        """Usable, every Rego test passed and every decision case gave what it expects."""
        return (
            self.usable
            and not self.mapping
            and all(t.passed for t in self.rego_tests)
            and all(c.passed for c in self.cases)
        )

    def failures(self) -> list[Problem]:
        """Each thing that is wrong, named by file: what a refused activation lists."""
        found = list(self.problems) + list(self.mapping)
        found += [
            Problem(t.module, f"Rego test {t.name} failed" + (f": {t.error}" if t.error else ""))
            for t in self.rego_tests
            if not t.passed
        ]
        found += [
            Problem(c.case.file, f"case #{c.case.index} ({c.case.name}): {'; '.join(c.failures)}")
            for c in self.cases
            if not c.passed
        ]
        return found

    def summary(self) -> dict[str, Any]:
        """Counts, as a ``policy`` ledger entry records them."""
        return {
            "rego_tests": {
                "passed": sum(t.passed for t in self.rego_tests),
                "failed": sum(not t.passed for t in self.rego_tests),
            },
            "cases": {
                "passed": sum(c.passed for c in self.cases),
                "failed": sum(not c.passed for c in self.cases),
            },
            "rules": {
                "total": len(self.coverage),
                "fired": sum(r.fired for r in self.coverage),
            },
        }

    def to_json(self) -> dict[str, Any]:
        """The whole report as JSON (``mandate policy test --json``)."""
        return {
            "bundle": str(self.bundle.root),
            "digest": self.bundle.digest,
            "engine": self.engine,
            "usable": self.usable,
            "passed": self.passed,
            "problems": [{"file": p.file, "message": p.message} for p in self.problems],
            "mapping": [{"file": p.file, "message": p.message} for p in self.mapping],
            "rego_tests": [
                {"module": t.module, "name": t.name, "passed": t.passed, "error": t.error}
                for t in self.rego_tests
            ],
            "cases": [
                {
                    "file": c.case.file,
                    "index": c.case.index,
                    "name": c.case.name,
                    "passed": c.passed,
                    "failures": list(c.failures),
                    "level": c.level,
                    "expected": {
                        "verdict": c.case.expect.verdict,
                        "reasons": None
                        if c.case.expect.reasons is None
                        else list(c.case.expect.reasons),
                        "recommendation": c.case.expect.recommendation,
                    },
                    "got": c.got.to_json(),
                }
                for c in self.cases
            ],
            "coverage": [
                {
                    "module": r.rule.module,
                    "rule": r.rule.name,
                    "code": r.rule.code,
                    "line": r.rule.line,
                    "cases": r.cases,
                    "tests": r.tests,
                }
                for r in self.coverage
            ],
            "summary": self.summary(),
        }


def check_bundle(bundle: Bundle, *, engine: str = "regorus") -> BundleCheck:
    """Run steps 1 to 4 on a loaded bundle. Never raises for what is wrong with the bundle.
    With ``engine="opa"`` the Rego tests and decision cases are run by OPA's own evaluator
    (coverage stays regorus's: OPA's evaluator here reports none per rule)."""
    check = BundleCheck(bundle)
    # 1. Engines: the gateway's (no test modules) for the cases, one with the tests for them.
    try:
        deciding = RegorusEngine(bundle, coverage=True)
        testing = RegorusEngine(bundle, include_tests=True, coverage=True)
    except EngineError as exc:
        where = _LOCATION.search(str(exc))
        named = where.group(1) if where and where.group(1) in bundle.files else "rego/"
        check.problems.append(Problem(named, str(exc)))
        return check
    try:
        permitter = Permitter(bundle.casbin_model, bundle.casbin_policy)
        for workflow in sorted(bundle.workflows):
            permitter.permit("nobody", workflow, "nothing", "propose")
    except Exception as exc:  # pycasbin raises whatever its parser or matcher hits
        check.problems.append(Problem("casbin/", f"Casbin cannot answer: {exc}"))
        return check
    for workflow in sorted(bundle.workflows):
        if not deciding.has_workflow(workflow):
            check.problems.append(
                Problem(
                    "data.json",
                    f"workflow {workflow} has no Rego package mandate.workflows.{workflow}",
                )
            )
    cases: list[Case] = []
    for path, text in sorted(bundle.cases.items()):
        try:
            cases += load_cases(path, text)
        except CaseError as exc:
            check.problems.append(Problem(exc.path, str(exc)))
    if check.problems:
        return check

    # 2. Action types, Casbin and case types agree.
    check.mapping = check_mapping(bundle, permitter)

    # 3. Rego unit tests, with what they reach.
    testing.clear_coverage()
    check.rego_tests = testing.run_tests()
    reached_by_tests = testing.covered_lines()

    # 4. Decision cases through the gateway's steps, one coverage reading each.
    policy = ActivePolicy(bundle, permitter, deciding)
    rules = deciding.rules()
    fired: dict[RegoRule, int] = dict.fromkeys(rules, 0)
    deciding.clear_coverage()
    for case in cases:
        try:
            result = _run(policy, case)
        except CaseError as exc:
            check.problems.append(Problem(exc.path, str(exc)))
            continue
        check.cases.append(result)
        reached = deciding.covered_lines()
        deciding.clear_coverage()
        for rule in rules:
            if rule.line in reached.get(rule.module, ()):
                fired[rule] += 1

    # 5. Coverage: a rule fired when its head was reached (its body held).
    check.coverage = [
        RuleCoverage(rule, fired[rule], rule.line in reached_by_tests.get(rule.module, ()))
        for rule in rules
    ]
    check.engine = f"regorus {deciding.version}"
    if engine == "opa":
        _on_opa(check, permitter)
    return check


def _on_opa(check: BundleCheck, permitter: Permitter) -> None:
    """Steps 3 and 4 again, on OPA's own evaluator: what the report shows of them."""
    try:
        testing = OpaEngine(check.bundle, include_tests=True)
        deciding = OpaEngine(check.bundle)
    except EngineError as exc:
        check.problems.append(Problem("rego/", str(exc)))
        return
    check.engine = deciding.version
    check.rego_tests = testing.run_tests()
    policy = ActivePolicy(check.bundle, permitter, deciding)
    check.cases = [_run(policy, result.case) for result in check.cases]


def check_mapping(bundle: Bundle, permitter: Permitter) -> list[Problem]:
    """Step 2: what ``data.json`` lists and what Casbin allows, each against the other."""
    found: list[Problem] = []
    proposers = sorted(permitter.roles_with_act("propose"))
    allowing: set[tuple[str, str, str]] = set()  # Casbin lines that allow a listed action type
    for workflow, config in sorted(bundle.workflows.items()):
        for action_type in sorted(config.action_types):
            answers = [
                permitter.permit(role, workflow, action_type, "propose") for role in proposers
            ]
            allowed = [a.matched for a in answers if a.allowed and a.matched]
            allowing |= {(m[0], m[1], m[2]) for m in allowed if len(m) >= 3}
            if not allowed:
                found.append(
                    Problem(
                        "data.json",
                        f"workflows.{workflow}.action_types lists {action_type}, which no role "
                        "may propose (casbin/policy.csv)",
                    )
                )
        reachable = {name for names in config.action_types.values() for name in names}
        for case_type in sorted(set(config.case_types) - reachable):
            found.append(
                Problem(
                    "data.json",
                    f"workflows.{workflow}.case_types has {case_type}, which no action type "
                    "may be (list it under action_types, or remove it)",
                )
            )
    for role, workflow, pattern in permitter.lines("propose"):
        if (role, workflow, pattern) in allowing:
            continue
        where = "any workflow" if workflow == "*" else f"workflow {workflow}"
        found.append(
            Problem(
                "casbin/policy.csv",
                f"p, {role}, {workflow}, {pattern}, propose allows no action type that data.json "
                f"lists for {where}",
            )
        )
    return found


def case_inputs(case: Case) -> Inputs:
    """What the gateway decides a case from: its proposal, made by a token of its executor's
    role, at its level, with its figures (unnamed ones 0) and its clock. CaseError if the
    proposal is not one the API would take."""
    try:
        proposal = Proposal.model_validate(case.proposal)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise CaseError(f"{case.where}: not a valid proposal: {problems}", case.file) from None
    executor = case.executor
    identity = Identity(
        token_id="case",  # noqa: S106 - a name, not a secret
        name=str(executor["name"]),
        role=str(executor["role"]),
        workflow=executor["workflow"],
        owner=str(executor["owner"]),
    )
    stats = {**ZERO_FIGURES, **case.stats}
    return Inputs.of(identity, proposal, case.level, stats, case.now, history=case.history)


def _run(policy: ActivePolicy, case: Case) -> CaseResult:
    got = redecide(policy, case_inputs(case))
    failures = []
    expect = case.expect
    if got.verdict != expect.verdict:
        said = f"expected {expect.verdict}, got {got.verdict}"
        detail = got.error or ", ".join(got.codes) or "no reasons"
        failures.append(f"{said} ({detail})")
    if expect.reasons is not None and tuple(got.codes) != expect.reasons:
        failures.append(
            f"expected reasons [{', '.join(expect.reasons)}], got [{', '.join(got.codes)}]"
        )
    if expect.warnings is not None and tuple(got.warning_codes) != expect.warnings:
        failures.append(
            f"expected warnings [{', '.join(expect.warnings)}], "
            f"got [{', '.join(got.warning_codes)}]"
        )
    if expect.recommendation is not None and got.recommendation != expect.recommendation:
        failures.append(
            f"expected recommendation {expect.recommendation}, got {got.recommendation}"
        )
    return CaseResult(case, got.level, got, tuple(failures))


def describe(check: BundleCheck) -> list[str]:
    """The report a security team reads: tests, cases, coverage, then the result."""
    bundle = check.bundle
    lines = [
        f"Policy bundle {bundle.root} (digest {bundle.digest[:16]}…, workflows "
        f"{', '.join(sorted(bundle.workflows)) or 'none'})",
        "",
    ]
    if check.problems:
        lines.append("The bundle cannot be checked:")
        lines += [f"  {p.file}: {p.message}" for p in check.problems]
        return lines
    if check.mapping:
        lines.append("Action types, Casbin and case types do not agree:")
        lines += [f"  FAIL  {p.file}: {p.message}" for p in check.mapping]
    else:
        lines.append("Action types, Casbin and case types agree.")
    lines.append("")
    passed = sum(t.passed for t in check.rego_tests)
    lines.append(
        f"Rego unit tests: {passed} passed, {len(check.rego_tests) - passed} failed"
        + ("" if check.rego_tests else " (none: add rego/*_test.rego with test_ rules)")
        + f" ({check.engine})"
    )
    for t in check.rego_tests:
        lines.append(f"  {'PASS' if t.passed else 'FAIL'}  {t.module}  {t.name}")
        if t.error:
            lines.append(f"        {t.error}")
    lines.append("")
    passed = sum(c.passed for c in check.cases)
    lines.append(
        f"Decision cases: {passed} passed, {len(check.cases) - passed} failed"
        + ("" if check.cases else " (none: add tests/*.yaml, see policies/README.md)")
        + f" ({check.engine})"
    )
    for c in check.cases:
        got = c.got.verdict + (f" [{', '.join(c.got.codes)}]" if c.got.codes else "")
        lines.append(
            f"  {'PASS' if c.passed else 'FAIL'}  {c.case.file} #{c.case.index}  {c.case.name}"
            f"  → {got}"
        )
        if not c.passed:
            lines += [f"        {failure}" for failure in c.failures]
            lines.append(
                f"        executor role {c.case.executor['role']}, level {c.level}, proposal "
                + json.dumps(c.case.proposal, sort_keys=True, default=str)
            )
    lines.append("")
    fired = sum(r.fired for r in check.coverage)
    lines.append(
        f"Rules fired (regorus coverage): {fired} of {len(check.coverage)}; "
        "cases = decision cases that fired it, tests = fired by a unit test"
    )
    width = max((len(r.rule.label) for r in check.coverage), default=0)
    where = max((len(f"{r.rule.module}:{r.rule.line}") for r in check.coverage), default=0)
    for r in check.coverage:
        mark = "" if r.fired else "  NEVER FIRED"
        lines.append(
            f"  {f'{r.rule.module}:{r.rule.line}'.ljust(where)}  {r.rule.label.ljust(width)}  "
            f"cases {r.cases:<3} tests {'yes' if r.tests else 'no'}{mark}".rstrip()
        )
    lines.append("")
    verdict = "PASS" if check.passed else "FAIL"
    lines.append(
        f"{verdict}: {counted(len(check.rego_tests), 'Rego test')}, "
        f"{counted(len(check.cases), 'decision case')}, {counted(len(check.failures()), 'failure')}"
    )
    return lines
