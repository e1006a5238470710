"""regorus's compiled VM (RVM) answers the workflow packages it can, exactly as the interpreter.

The reference here is the interpreter itself: a ``RegorusEngine`` with ``coverage=True``
evaluates everything on it. Each input below is asked of both; any difference, an error on one
side included, fails. The inputs go beyond what the gateway passes on (amounts that are not
decimal strings, fields of the wrong type), since the VM must not answer those differently
either: where it would (a runtime error it turns into undefined), the interpreter answers.
"""

from __future__ import annotations

import itertools
import logging
import types
from pathlib import Path
from typing import Any

import pytest
import regorus

from gateway.policy import rego
from gateway.policy.bundle import load_bundle
from gateway.policy.rego import EngineError, RegoResult, RegorusEngine
from tests.gateway.support import POLICIES, with_parking_rules
from tests.gateway.test_classify import classifying_bundle

PARKING = "data.mandate.workflows.parking"
CLAIMS = "data.mandate.workflows.claims"
FILES = "data.mandate.workflows.files"

AMOUNTS: list[Any] = [
    None, "0.49", "0.50", "20.00", "200", "200.01", "1000", "1000.01", "12000", "abc", "",
    "1e3", " 5", "-3", 250, 0.5, True, ["1"], "9" * 40,
]  # fmt: skip
CONFIDENCES: list[Any] = [None, 0.5, 0.79999, 0.8, 0.95, "0.9", True]
HISTORIES: list[Any] = [
    None,
    {"first_action_type": True, "first_resource": False, "amounts": {"count": 0, "p95": None}},
    {"first_action_type": False, "first_resource": True, "amounts": {"count": 25, "p95": "100"}},
    {"first_action_type": True, "first_resource": True, "amounts": {"count": 25, "p95": "x"}},
]


def rego_input(
    action_type: str, amount: Any, confidence: Any, level: int, history: Any
) -> dict[str, Any]:
    params: dict[str, Any] = {"lot": "lot-7", "customer": "c-1"}
    if amount is not None:
        params["amount"] = amount
    input_: dict[str, Any] = {
        "proposal": {
            "action_type": action_type,
            "resource": "thing/1",
            "params": params,
            "context": {"current_lot": "lot-7" if level % 2 else "lot-9"},
            "confidence": confidence,
        },
        "executor": {"name": "agent-1", "role": "agent", "owner": None},
        "now": "2026-06-01T09:00:00.000000Z",
        "autonomy": {"case_type": action_type, "level": level, "name": "x"},
        "stats": {"decisions": 0, "holds": 0},
    }
    if history is not None:
        input_["history"] = history
    return input_


def spread(action_types: list[str]) -> list[dict[str, Any]]:
    """Every combination of the values above: about 5,000 inputs a workflow."""
    return [
        rego_input(*combination)
        for combination in itertools.product(
            action_types, AMOUNTS, CONFIDENCES, (1, 2, 3, 4), HISTORIES
        )
    ]


def answer(call: Any, *args: Any) -> Any:
    try:
        return call(*args)
    except EngineError as exc:
        return ("EngineError", str(exc))


def assert_same_answers(
    bundle_root: Path, workflow: str, action_types: list[str], *, classify: bool = False
) -> None:
    bundle = load_bundle(bundle_root)
    vm, interpreter = RegorusEngine(bundle), RegorusEngine(bundle, coverage=True)
    assert interpreter.vm_plans == {}
    assert rego.package_of(workflow) in vm.vm_plans
    seen: set[str] = set()
    for input_ in spread(action_types):
        said = answer(vm.evaluate, workflow, input_)
        assert said == answer(interpreter.evaluate, workflow, input_), input_
        seen.add("error" if isinstance(said, tuple) else "deny" if said.deny else "no deny")
        if classify:
            case_type = answer(vm.classify, workflow, input_)
            assert case_type == answer(interpreter.classify, workflow, input_), input_
            seen.add(f"case_type {case_type}")
    assert {"error", "deny", "no deny"} <= seen


def no_interpreter(engine: RegorusEngine) -> None:
    """Make the engine fail the test if it asks its interpreter anything from now on."""

    def refuse() -> Any:
        pytest.fail("the interpreter was asked, not the VM")

    engine._engine = refuse  # type: ignore[method-assign]


# -- which packages the VM answers --------------------------------------------------------------


def test_the_vm_answers_the_shipped_parking_and_claims_packages() -> None:
    engine = RegorusEngine(load_bundle(POLICIES))
    assert set(engine.vm_plans) == {PARKING, CLAIMS}
    # Helper sets (``paths``) and iteration: the interpreter's, and it says why.
    assert set(engine.interpreted) == {FILES}
    assert "paths" in engine.interpreted[FILES]

    no_interpreter(engine)
    booking = rego_input("booking.create", None, 0.95, 3, HISTORIES[1])
    assert engine.evaluate("parking", booking) == RegoResult(
        deny=[],
        hold=[],
        warn=[
            {
                "code": "first_of_its_kind",
                "message": "agent-1 proposes booking.create for the first time",
            }
        ],
    )
    refund = rego_input("refund.issue", "1000.01", 0.5, 2, None)
    assert [r["code"] for r in engine.evaluate("parking", refund).deny] == ["over_hard_limit"]


def test_coverage_is_the_interpreters() -> None:
    engine = RegorusEngine(load_bundle(POLICIES), coverage=True)
    assert engine.vm_plans == {}
    assert engine.interpreted == {}


# -- the same answers -----------------------------------------------------------------------


def test_vm_and_interpreter_agree_on_the_shipped_parking_package() -> None:
    assert_same_answers(
        POLICIES, "parking", ["refund.issue", "booking.create", "booking.modify"], classify=True
    )


def test_vm_and_interpreter_agree_on_the_shipped_claims_package() -> None:
    assert_same_answers(POLICIES, "claims", ["claim.approve", "claim.pay"])


def test_vm_and_interpreter_agree_on_the_classifying_bundle(tmp_path: Path) -> None:
    root = classifying_bundle(tmp_path)
    engine = RegorusEngine(load_bundle(root))
    # Two case_type definitions: where the VM finds none, the interpreter is asked whether
    # none holds or both do (and disagree, which it raises on).
    assert engine.vm_plans[PARKING].recheck == {"case_type"}
    assert_same_answers(root, "parking", ["refund.issue", "booking.modify"], classify=True)


def test_an_input_whose_amount_does_not_read_as_a_number_goes_to_the_interpreter() -> None:
    engine = RegorusEngine(load_bundle(POLICIES))
    refund = rego_input("refund.issue", "abc", 0.95, 3, None)
    # The VM would leave the amount undefined and deny nothing: the interpreter fails closed.
    with pytest.raises(EngineError, match=r"regorus failed on .*could not parse string as number"):
        engine.evaluate("parking", refund)


def test_an_undefined_case_type_is_none_on_the_vm(tmp_path: Path) -> None:
    root = with_parking_rules(
        tmp_path,
        '\ncase_type := "refund.issue" if input.proposal.action_type == "refund.issue"\n',
    )
    engine = RegorusEngine(load_bundle(root))
    assert engine.vm_plans[PARKING].recheck == frozenset()
    no_interpreter(engine)
    assert engine.classify("parking", rego_input("booking.create", None, 0.9, 3, None)) is None
    refund = rego_input("refund.issue", "5", 0.9, 3, None)
    assert engine.classify("parking", refund) == "refund.issue"


def test_case_type_definitions_that_disagree_are_an_engine_error(tmp_path: Path) -> None:
    root = classifying_bundle(tmp_path)
    rego_file = root / "rego" / "parking.rego"
    rego_file.write_text(rego_file.read_text().replace("<= 200", "<= 300"))
    engine = RegorusEngine(load_bundle(root))
    assert engine.classify("parking", rego_input("refund.issue", "150", 0.9, 3, None)) == (
        "refund.issue"
    )
    with pytest.raises(EngineError, match="regorus failed on"):
        engine.classify("parking", rego_input("refund.issue", "250", 0.9, 3, None))


def test_a_reason_with_an_undefined_part_is_the_interpreters_none(tmp_path: Path) -> None:
    root = with_parking_rules(
        tmp_path,
        '\nhold contains {"code": "noted", "message": sprintf("note: %v", '
        + "[input.proposal.params.note])} if input.autonomy.level < 3\n",
    )
    engine = RegorusEngine(load_bundle(root))
    assert PARKING in engine.vm_plans
    # The VM's answer would hold "<undefined>"; the interpreter's has no such reason.
    without = rego_input("booking.create", None, 0.95, 2, None)
    assert engine.evaluate("parking", without).hold == []
    with_note = rego_input("booking.create", None, 0.95, 2, None)
    with_note["proposal"]["params"]["note"] = "late"
    no_interpreter(engine)
    assert engine.evaluate("parking", with_note).hold == [
        {"code": "noted", "message": "note: late"}
    ]


@pytest.mark.parametrize(
    ("rule", "why"),
    [
        ("100 / to_number(input.proposal.params.split) < 10", "ArithExpr"),
        ("some x in input.proposal.params.items; x", "SomeIn"),
        ('x := input.proposal.params.split; x == "1"', "AssignExpr"),
        ('startswith(input.proposal.resource, "x")', "startswith"),
        ("warn == warn", "a reference to warn"),
    ],
)
def test_what_may_fail_at_runtime_leaves_the_package_to_the_interpreter(
    tmp_path: Path, rule: str, why: str
) -> None:
    root = with_parking_rules(
        tmp_path,
        f'\ndeny contains {{"code": "c", "message": "m"}} if {{ {rule} }}\n',
    )
    engine = RegorusEngine(load_bundle(root))
    assert PARKING not in engine.vm_plans
    assert why in engine.interpreted[PARKING]
    assert CLAIMS in engine.vm_plans


def test_a_bundle_the_vm_does_not_compile_is_evaluated_by_the_interpreter(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    class Uncompilable:
        @staticmethod
        def compile_from_modules(*_: Any) -> Any:
            raise RuntimeError("error: not for the VM")

    fake = types.SimpleNamespace(Engine=regorus.Engine, Rvm=regorus.Rvm, Program=Uncompilable)
    monkeypatch.setattr(rego, "regorus", fake)
    with caplog.at_level(logging.WARNING, logger="mandate"):
        engine = RegorusEngine(load_bundle(POLICIES))
    assert engine.vm_plans == {}
    assert "not for the VM" in engine.interpreted[PARKING]
    assert [r.getMessage() for r in caplog.records if "VM" in r.getMessage()] == [
        f"bundle {load_bundle(POLICIES).digest[:12]}: regorus's VM does not compile it: "
        "error: not for the VM; the interpreter evaluates it"
    ]
    refund = rego_input("refund.issue", "1000.01", 0.5, 2, None)
    assert [r["code"] for r in engine.evaluate("parking", refund).deny] == ["over_hard_limit"]
