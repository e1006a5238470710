"""The bundle decides the case type, never the proposer (the unit of autonomy: its level, quorum
and audit rate), and amounts are what the workflow declares: a hostile executor cannot name
another case type to get its level, nor send an amount the policy engines would read
differently.

Each test here was written against a gateway that took the proposer's ``case_type`` as it came
(``refund.issue`` claimed as ``shuttle.dispatch`` ran at level 4 and was dispatched) and took
negative amounts and amounts with 18 decimals.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.decision.steps import classify, classify_input, validate
from gateway.errors import DecisionUnavailable, InvalidInput
from gateway.identity import Identity
from gateway.policy.active import ActivePolicy, load_policy
from gateway.policy.bundle import BundleError, load_bundle
from gateway.schemas import Proposal
from tests.conftest import Database
from tests.gateway.support import (
    POLICIES,
    Gateway,
    Serve,
    assert_problem,
    copy_bundle,
    fields_named,
    proposal,
)

NOW = "2026-06-01T09:00:00.000000Z"
PAYMENTS = Identity("tok_payments", "payments-1", "payments-agent", None, "payments-owner")


@pytest.fixture(scope="module")
def policy() -> ActivePolicy:
    return load_policy(POLICIES)


def hostile(workflow: str, action_type: str, case_type: str | None, **extra: Any) -> dict[str, Any]:
    body = proposal(workflow, action_type, **extra)
    if case_type is None:
        body.pop("case_type")
    else:
        body["case_type"] = case_type
    return body


def edit_data(root: Path, change: Any) -> None:
    data = orjson.loads((root / "data.json").read_bytes())
    change(data)
    (root / "data.json").write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))


# A refund over 200 is a case type of its own, with a level and quorum of its own.
REFUND_CLASSIFIER = """
case_type := "refund.large" if {
	input.proposal.action_type == "refund.issue"
	to_number(input.proposal.params.amount) > 200
}

case_type := "refund.issue" if {
	input.proposal.action_type == "refund.issue"
	to_number(input.proposal.params.amount) <= 200
}
"""


def classifying_bundle(tmp_path: Path) -> Path:
    """The default bundle where refund.issue is refund.issue or refund.large, by a rule."""
    root = copy_bundle(tmp_path, "classifying")

    def change(data: dict[str, Any]) -> None:
        parking = data["workflows"]["parking"]
        parking["case_types"]["refund.large"] = {"initial_level": 1, "quorum": 2}
        parking["action_types"]["refund.issue"] = {"case_types": ["refund.issue", "refund.large"]}
        # Two listed, none classified: the proposer must name one.
        parking["case_types"]["booking.move"] = {"initial_level": 2, "quorum": 1}
        parking["action_types"]["booking.modify"] = {
            "case_types": ["booking.modify", "booking.move"]
        }

    edit_data(root, change)
    rego = root / "rego" / "parking.rego"
    rego.write_text(rego.read_text() + REFUND_CLASSIFIER)
    return root


# -- over HTTP, as a hostile executor -------------------------------------------------------


def test_a_refund_claimed_as_shuttle_dispatch_is_refused_and_nothing_runs(
    gateway: Gateway,
) -> None:
    payments = gateway.as_role("payments-agent")
    before = gateway.proposals_recorded()
    body = hostile("parking", "refund.issue", "shuttle.dispatch", amount="900", confidence=0.99)
    problem = assert_problem(payments.post("/v1/actions", json=body), 422)
    assert fields_named(problem) == {"case_type"}
    assert "refund.issue" in problem["detail"]  # it names the allowed one
    assert gateway.proposals_recorded() == before

    # Without a claim the bundle decides: the refund is held at its own level, 1.
    body.pop("case_type")
    answer = payments.post("/v1/actions", json=body)
    assert answer.status_code == 200, answer.text
    verdict = answer.json()
    assert verdict["verdict"] == "hold"
    autonomy = verdict["trace"]["autonomy"]
    assert (autonomy["case_type"], autonomy["case_type_source"], autonomy["level"]) == (
        "refund.issue",
        "only",
        1,
    )


def test_a_claim_cannot_be_paid_as_approved_to_need_fewer_approvals(gateway: Gateway) -> None:
    claims = gateway.as_role("claims-agent")
    body = hostile("claims", "claim.approve", "claim.pay", amount="12000", confidence=0.97)
    problem = assert_problem(claims.post("/v1/actions", json=body), 422)
    assert fields_named(problem) == {"case_type"}

    body["case_type"] = "claim.approve"
    verdict = claims.post("/v1/actions", json=body).json()
    assert verdict["verdict"] == "hold"
    assert verdict["approval"]["quorum"] == 2  # claim.approve's quorum, not claim.pay's 1
    assert verdict["trace"]["autonomy"]["case_type_source"] == "only"


@pytest.mark.parametrize(
    ("action_type", "case_type", "field"),
    [
        ("refund.bogus", None, "action_type"),  # Casbin's refund.* allows it; the bundle does not
        ("refund.issue", "no.such.case", "case_type"),
    ],
)
def test_what_the_bundle_does_not_list_is_a_422(
    gateway: Gateway, action_type: str, case_type: str | None, field: str
) -> None:
    before = gateway.proposals_recorded()
    body = hostile("parking", action_type, case_type, amount="20", confidence=0.99)
    problem = assert_problem(gateway.as_role("payments-agent").post("/v1/actions", json=body), 422)
    assert fields_named(problem) == {field}
    assert gateway.proposals_recorded() == before


def test_a_governor_cannot_set_a_level_for_a_case_type_the_bundle_does_not_know(
    gateway: Gateway,
) -> None:
    governor = gateway.as_role("governor")
    answer = governor.post("/v1/autonomy/parking/no.such.case", json={"level": 4, "reason": "x"})
    problem = assert_problem(answer, 422)
    assert "no.such.case" in problem["detail"]
    assert "refund.issue" in problem["detail"]  # it names the known ones
    assert assert_problem(governor.get("/v1/autonomy/parking/no.such.case"), 404)


@pytest.mark.parametrize(
    ("workflow", "action_type", "role", "amount"),
    [
        ("claims", "claim.pay", "claims-agent", "-999999999999999999.99"),
        ("claims", "claim.pay", "claims-agent", "-5"),
        ("claims", "claim.pay", "claims-agent", "0"),
        ("claims", "claim.pay", "claims-agent", "0.00"),
        ("parking", "refund.issue", "payments-agent", "-0"),
        ("parking", "refund.issue", "payments-agent", "1000.00000000000000001"),
        ("parking", "refund.issue", "payments-agent", "20.001"),
    ],
)
def test_negative_zero_and_over_scale_amounts_are_refused(
    sqlite_gateway: Gateway, workflow: str, action_type: str, role: str, amount: str
) -> None:
    before = sqlite_gateway.proposals_recorded()
    body = hostile(workflow, action_type, None, amount=amount, confidence=0.99)
    problem = assert_problem(sqlite_gateway.as_role(role).post("/v1/actions", json=body), 422)
    assert fields_named(problem) == {"params.amount"}
    assert sqlite_gateway.proposals_recorded() == before


def test_a_classifying_bundle_decides_the_case_type_and_its_quorum(
    database: Database, serve_gateway: Serve, tmp_path: Path
) -> None:
    gateway = serve_gateway(database, policies=classifying_bundle(tmp_path))
    payments = gateway.as_role("payments-agent")

    large = hostile("parking", "refund.issue", None, amount="900", confidence=0.99)
    verdict = payments.post("/v1/actions", json=large).json()
    autonomy = verdict["trace"]["autonomy"]
    assert (autonomy["case_type"], autonomy["case_type_source"]) == ("refund.large", "classified")
    assert verdict["approval"]["quorum"] == 2
    assert "data.mandate.workflows.parking.case_type" in verdict["trace"]["rego"]["query"]

    # Claiming the smaller case type for a large refund contradicts the classification.
    lie = hostile("parking", "refund.issue", "refund.issue", amount="900", confidence=0.99)
    problem = assert_problem(payments.post("/v1/actions", json=lie), 422)
    assert "refund.large" in problem["detail"]

    # Two listed and no rule: the proposer names one of them, or is told which it may name.
    booking = gateway.as_role("booking-agent")
    move = hostile("parking", "booking.modify", None, confidence=0.95)
    problem = assert_problem(booking.post("/v1/actions", json=move), 422)
    assert "booking.modify, booking.move" in problem["detail"]
    move["case_type"] = "booking.move"
    verdict = booking.post("/v1/actions", json=move).json()
    autonomy = verdict["trace"]["autonomy"]
    assert (autonomy["case_type"], autonomy["case_type_source"], autonomy["level"]) == (
        "booking.move",
        "claimed",
        2,
    )


# -- the steps, in process ------------------------------------------------------------------


def _classify(policy: ActivePolicy, body: dict[str, Any]) -> tuple[str, str]:
    proposal_ = Proposal.model_validate(body)
    validate(proposal_, policy)
    config = policy.bundle.workflows[proposal_.workflow]
    input_ = classify_input(proposal_.model_dump(), PAYMENTS, NOW)
    found = classify(policy.engine, config, proposal_, input_)
    return found.case_type, found.source


def test_classify_takes_the_only_listed_case_type(policy: ActivePolicy) -> None:
    body = hostile("parking", "refund.issue", None, amount="20")
    assert _classify(policy, body) == ("refund.issue", "only")
    body["case_type"] = "refund.issue"
    assert _classify(policy, body) == ("refund.issue", "only")


def test_classify_refuses_a_claim_the_rule_contradicts(tmp_path: Path) -> None:
    policy = load_policy(classifying_bundle(tmp_path))
    assert _classify(policy, hostile("parking", "refund.issue", None, amount="201")) == (
        "refund.large",
        "classified",
    )
    with pytest.raises(InvalidInput) as caught:
        _classify(policy, hostile("parking", "refund.issue", "refund.issue", amount="201"))
    assert caught.value.errors[0][0] == "case_type"


def test_a_rule_naming_an_unlisted_case_type_fails_closed(tmp_path: Path) -> None:
    root = classifying_bundle(tmp_path)
    rego = root / "rego" / "parking.rego"
    rego.write_text(rego.read_text().replace('"refund.large" if', '"shuttle.dispatch" if'))
    policy = load_policy(root)
    with pytest.raises(DecisionUnavailable, match=r"shuttle\.dispatch"):
        _classify(policy, hostile("parking", "refund.issue", None, amount="900"))


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda p: p.pop("action_types"), "action_types"),
        (lambda p: p["action_types"].update({"refund.issue": {"case_types": []}}), "refund.issue"),
        (
            lambda p: p["action_types"].update({"refund.issue": {"case_types": ["refund.nope"]}}),
            "refund.nope",
        ),
        (lambda p: p.update(amount_scale=19), "amount_scale"),
        (lambda p: p.update(amount_scale="2"), "amount_scale"),
        (lambda p: p.update(signed_amounts="yes"), "signed_amounts"),
    ],
)
def test_a_bundle_must_list_its_action_types_and_their_case_types(
    tmp_path: Path, change: Any, named: str
) -> None:
    root = copy_bundle(tmp_path)
    edit_data(root, lambda data: change(data["workflows"]["parking"]))
    with pytest.raises(BundleError, match=named):
        load_bundle(root)


def test_a_bundle_may_allow_negative_amounts(tmp_path: Path) -> None:
    root = copy_bundle(tmp_path)
    edit_data(root, lambda data: data["workflows"]["claims"].update(signed_amounts=True))
    policy = load_policy(root)
    validate(Proposal.model_validate(hostile("claims", "claim.pay", None, amount="-5")), policy)
    with pytest.raises(InvalidInput, match="-0 is not an amount"):
        validate(Proposal.model_validate(hostile("claims", "claim.pay", None, amount="-0")), policy)
