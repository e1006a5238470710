"""Each step of the decision path on its own: validate, permit, evaluate, decide; the Permitter's
per-domain enforcers and cache; the Rego unit tests of a bundle."""

from __future__ import annotations

import gc
import socket
import sys
import threading
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from gateway.decision.steps import decide, evaluate, permit, rego_input, validate
from gateway.errors import DecisionUnavailable, Forbidden, InvalidInput
from gateway.identity import Identity
from gateway.policy.active import ActivePolicy, load_policy
from gateway.policy.bundle import load_bundle
from gateway.policy.permit import DENY_BY_DEFAULT, PermitResult, Permitter
from gateway.policy.rego import OpaServerEngine, RegoResult, RegorusEngine, live_engines
from gateway.schemas import Proposal
from tests.gateway.support import POLICIES, copy_bundle, proposal, with_parking_rules

NFD = unicodedata.normalize("NFD", "café")  # "cafe" + a combining accent: not NFC
assert unicodedata.normalize("NFC", NFD) != NFD


@pytest.fixture(scope="module")
def policy() -> ActivePolicy:
    return load_policy(POLICIES)


def who(role: str, workflow: str | None = None) -> Identity:
    return Identity(f"tok_{role}", f"{role}-1", role, workflow, f"{role}-owner")


def as_proposal(body: dict[str, Any]) -> Proposal:
    return Proposal.model_validate(body)


def invalid_fields(body: dict[str, Any], policy: ActivePolicy) -> list[str]:
    with pytest.raises(InvalidInput) as caught:
        validate(as_proposal(body), policy)
    return [field for field, _ in caught.value.errors]


# -- validate --------------------------------------------------------------------------------


def test_validate_passes_a_good_proposal(policy: ActivePolicy) -> None:
    for amount in ("20", "20.00", "1000.5", "0.01"):
        validate(as_proposal(proposal("parking", "refund.issue", amount=amount)), policy)
    validate(as_proposal(proposal("parking", "booking.create", resource="café/1")), policy)


def test_validate_names_an_unknown_workflow(policy: ActivePolicy) -> None:
    body = proposal("laundry", "wash.start")
    with pytest.raises(InvalidInput) as caught:
        validate(as_proposal(body), policy)
    assert caught.value.errors[0][0] == "workflow"
    assert "laundry" in caught.value.detail
    assert "claims, files, parking" in caught.value.detail  # it says which workflows exist


@pytest.mark.parametrize("amount", [20.5, 20, "20 EUR", "1e3", "twenty", "", " 20", "0x14"])
def test_validate_wants_the_amount_as_a_decimal_string(
    policy: ActivePolicy, amount: object
) -> None:
    body = proposal("parking", "refund.issue")
    body["params"] = {"amount": amount}
    assert invalid_fields(body, policy) == ["params.amount"]


def test_validate_names_a_float_nested_in_params(policy: ActivePolicy) -> None:
    body = proposal("parking", "booking.create")
    body["params"] = {"items": [{"sku": "A"}, {"price": 1.5}]}
    assert invalid_fields(body, policy) == ["params.items[1].price"]


@pytest.mark.parametrize(
    ("where", "field"),
    [
        ("params", "params.note"),
        ("context", "context.note"),
        ("key", f"params.{NFD}"),
        ("resource", "resource"),
    ],
)
def test_validate_names_a_string_that_is_not_nfc(
    policy: ActivePolicy, where: str, field: str
) -> None:
    body = proposal("parking", "booking.create")
    if where == "params":
        body["params"] = {"note": NFD}
    elif where == "context":
        body["context"] = {"note": NFD}
    elif where == "key":
        body["params"] = {NFD: "x"}
    else:
        body["resource"] = f"{NFD}/1"
    with pytest.raises(InvalidInput) as caught:
        validate(as_proposal(body), policy)
    assert [f for f, _ in caught.value.errors] == [field]
    assert "NFC" in caught.value.detail


# -- permit ----------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["approver", "auditor", "governor", "policy-admin", "nobody"])
def test_permit_refuses_a_role_that_proposes_nothing(policy: ActivePolicy, role: str) -> None:
    with pytest.raises(Forbidden, match=f"role '{role}' may not propose"):
        permit(policy.permitter, who(role), as_proposal(proposal("parking", "booking.create")))


def test_permit_refuses_a_token_bound_to_another_workflow(policy: ActivePolicy) -> None:
    bound = who("claims-agent", workflow="claims")
    with pytest.raises(Forbidden, match="bound to workflow 'claims', not 'parking'"):
        permit(policy.permitter, bound, as_proposal(proposal("parking", "booking.create")))
    allowed = permit(policy.permitter, bound, as_proposal(proposal("claims", "claim.approve")))
    assert allowed.allowed


def test_permit_answers_not_allowed_beyond_the_mandate_with_the_request(
    policy: ActivePolicy,
) -> None:
    result = permit(
        policy.permitter, who("booking-agent"), as_proposal(proposal("parking", "refund.issue"))
    )
    assert not result.allowed
    assert result.trace() == {
        "request": ["booking-agent", "parking", "refund.issue", "propose"],
        "allowed": False,
        "matched": DENY_BY_DEFAULT,
    }


def test_permit_allows_within_the_mandate_naming_the_line(policy: ActivePolicy) -> None:
    result = permit(
        policy.permitter, who("booking-agent"), as_proposal(proposal("parking", "booking.cancel"))
    )
    assert result.allowed
    assert result.trace()["matched"] == ["booking-agent", "parking", "booking.*", "propose"]


def test_permit_follows_role_inheritance_within_its_workflow(policy: ActivePolicy) -> None:
    senior = who("senior-claims-agent")
    claim = permit(policy.permitter, senior, as_proposal(proposal("claims", "claim.approve")))
    assert claim.allowed
    assert claim.trace()["matched"] == ["claims-agent", "claims", "claim.*", "propose"]
    # The inheritance is granted in claims only: nothing in parking.
    refund = permit(policy.permitter, senior, as_proposal(proposal("parking", "refund.issue")))
    assert not refund.allowed


def test_permit_follows_a_chain_of_inherited_roles() -> None:
    bundle = load_bundle(POLICIES)
    chained = bundle.casbin_policy + "g, lead-claims-agent, senior-claims-agent, claims\n"
    permitter = Permitter(bundle.casbin_model, chained)
    assert "lead-claims-agent" in permitter.roles_with_act("propose")
    result = permit(
        permitter, who("lead-claims-agent"), as_proposal(proposal("claims", "claim.approve"))
    )
    assert result.allowed


def test_permit_fails_closed_when_casbin_cannot_evaluate_its_matcher() -> None:
    bundle = load_bundle(POLICIES)
    broken = bundle.casbin_model.replace("keyMatch(r.obj, p.obj)", "noSuchMatcher(r.obj, p.obj)")
    assert broken != bundle.casbin_model
    permitter = Permitter(broken, bundle.casbin_policy)
    with pytest.raises(DecisionUnavailable, match="Casbin failed"):
        permit(permitter, who("booking-agent"), as_proposal(proposal("parking", "booking.create")))


# -- the Permitter: per-domain lines, cache until the policy changes ---------------------------


def test_a_line_in_one_workflow_grants_nothing_in_another() -> None:
    bundle = load_bundle(POLICIES)
    permitter = Permitter(bundle.casbin_model, bundle.casbin_policy)
    assert permitter.permit("claims-agent", "claims", "claim.pay", "propose").allowed
    assert not permitter.permit("claims-agent", "parking", "claim.pay", "propose").allowed
    # A line for every workflow ("*") applies in each of them.
    for workflow in ("parking", "claims", "anything"):
        assert permitter.permit("governor", workflow, "refund.issue", "govern").allowed
    # The act is part of the question: approvers approve, they do not propose.
    assert permitter.permit("approver", "parking", "refund.issue", "approve").allowed
    assert not permitter.permit("approver", "parking", "refund.issue", "propose").allowed


def test_thousands_of_lines_elsewhere_change_no_answer() -> None:
    bundle = load_bundle(POLICIES)
    small = Permitter(bundle.casbin_model, bundle.casbin_policy)
    filler = "".join(
        f"p, agent-{i}, workflow-{i % 50}, thing-{i}.*, propose\n" for i in range(5000)
    )
    large = Permitter(bundle.casbin_model, bundle.casbin_policy + filler)
    questions = [
        ("booking-agent", "parking", "booking.create", "propose"),
        ("booking-agent", "parking", "refund.issue", "propose"),
        ("senior-claims-agent", "claims", "claim.approve", "propose"),
        ("approver", "claims", "claim.approve", "approve"),
        ("agent-7", "parking", "thing-7.x", "propose"),
    ]
    for question in questions:
        assert large.permit(*question) == small.permit(*question)
    assert large.permit("agent-7", "workflow-7", "thing-7.x", "propose").allowed


def test_a_changed_policy_takes_effect_in_a_new_permitter() -> None:
    bundle = load_bundle(POLICIES)
    before = Permitter(bundle.casbin_model, bundle.casbin_policy)
    question = ("booking-agent", "parking", "booking.create", "propose")
    first = before.permit(*question)
    assert first.allowed
    assert before.permit(*question) is first  # answered from the cache

    changed = bundle.casbin_policy.replace(
        "p, booking-agent, parking, booking.*, propose",
        "p, booking-agent, parking, booking.modify, propose",
    )
    assert changed != bundle.casbin_policy
    after = Permitter(bundle.casbin_model, changed)
    assert not after.permit(*question).allowed
    assert after.permit("booking-agent", "parking", "booking.modify", "propose").allowed
    assert before.permit(*question).allowed  # the old permitter answers for the old policy


# -- evaluate --------------------------------------------------------------------------------


def _input(body: dict[str, Any], role: str, level: int) -> dict[str, Any]:
    recorded = as_proposal(body).model_dump()
    if recorded["confidence"] is not None:
        recorded["confidence"] = repr(recorded["confidence"])
    stats = dict.fromkeys(("decisions", "holds"), 0)
    case_type = str(recorded["case_type"] or recorded["action_type"])
    return rego_input(recorded, who(role), case_type, level, stats, "2026-01-01T00:00:00.000000Z")


PARKING_BOOKING = proposal("parking", "booking.create", confidence=0.95)


def broken_rego_bundle(tmp_path: Path) -> Path:
    """The default bundle plus a parking rule that divides by zero when evaluated."""
    return with_parking_rules(
        tmp_path,
        '\ndeny contains {"code": "broken", "message": "m"} if {\n'
        + "\tcount(input.proposal.params) / 0 > 1\n}\n",
    )


def test_evaluate_fails_closed_when_regorus_errors(tmp_path: Path) -> None:
    engine = RegorusEngine(load_bundle(broken_rego_bundle(tmp_path)))
    body = proposal("parking", "booking.create", confidence=0.95)
    with pytest.raises(
        DecisionUnavailable, match=r"regorus failed on data\.mandate\.workflows\.parking"
    ):
        evaluate(engine, "parking", _input(body, "booking-agent", 3))


def test_evaluate_fails_closed_when_the_bundle_has_no_package_for_the_workflow() -> None:
    engine = RegorusEngine(load_bundle(POLICIES))
    with pytest.raises(
        DecisionUnavailable, match=r"no Rego package data\.mandate\.workflows\.laundry"
    ):
        evaluate(engine, "laundry", {"proposal": {}})


def test_the_engines_of_a_bundle_that_is_gone_are_dropped_not_kept() -> None:
    """Each activation or check of a bundle makes a RegorusEngine; the regorus engines of the
    ones gone must not pile up in a gateway that runs for months."""
    bundle = load_bundle(POLICIES)
    held: list[int] = []

    def activate_twenty_times() -> None:
        for _ in range(20):
            engine = RegorusEngine(bundle)
            evaluate(engine, "parking", _input(PARKING_BOOKING, "booking-agent", 3))
            del engine
            gc.collect()
        held.append(live_engines())

    thread = threading.Thread(target=activate_twenty_times)  # a thread of its own: a clean count
    thread.start()
    thread.join()
    assert held == [1]  # the last one's, until that thread evaluates again


def test_engines_are_dropped_on_the_threads_that_made_them() -> None:
    """A regorus engine dropped on another thread than its own raises (and leaks): the engines
    that worker threads made for a bundle go on those threads, never where the bundle went."""
    bundle = load_bundle(POLICIES)
    problems: list[str] = []

    def sixteen_evaluations(pool: ThreadPoolExecutor, engine: RegorusEngine) -> None:
        body = _input(PARKING_BOOKING, "booking-agent", 3)
        answers = list(pool.map(lambda _: evaluate(engine, "parking", body), range(16)))
        assert all(answer.deny == [] for answer in answers)

    previous = sys.unraisablehook
    sys.unraisablehook = lambda report: problems.append(str(report.exc_value))
    try:
        with ThreadPoolExecutor(4) as pool:
            sixteen_evaluations(pool, RegorusEngine(bundle))
            gc.collect()  # that engine's RegorusEngine goes here, on the main thread
            sixteen_evaluations(pool, RegorusEngine(bundle))
        gc.collect()
    finally:
        sys.unraisablehook = previous
    assert problems == []


def test_a_failed_evaluation_kept_past_its_thread_drops_no_engine_elsewhere(
    tmp_path: Path,
) -> None:
    """An evaluation that fails is a DecisionUnavailable whose chain of causes reaches the
    engine's frames; kept after the thread ends (a future holds it, a cycle waits for the
    collector), it must not be what keeps the thread's engine, which would then be dropped on
    whichever thread collects it."""
    bundle = with_parking_rules(
        tmp_path,
        '\ndeny contains {"code": "odd", "message": "odd"} if {\n'
        + "\tto_number(input.proposal.resource) % 2 == 1\n}\n",
    )
    engine = RegorusEngine(load_bundle(bundle))
    kept: list[BaseException] = []

    def fail() -> None:
        try:
            evaluate(engine, "parking", _input(PARKING_BOOKING, "booking-agent", 3))
        except DecisionUnavailable as exc:
            kept.append(exc)

    problems: list[str] = []
    previous = sys.unraisablehook
    sys.unraisablehook = lambda report: problems.append(str(report.exc_value))
    try:
        thread = threading.Thread(target=fail)
        thread.start()
        thread.join()
        assert len(kept) == 1
        kept.clear()
        gc.collect()
    finally:
        sys.unraisablehook = previous
    assert problems == []


def test_evaluate_fails_closed_when_the_opa_server_is_unreachable() -> None:
    with socket.socket() as sock:  # a port that nothing listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    engine = OpaServerEngine(f"http://127.0.0.1:{port}", load_bundle(POLICIES))
    with pytest.raises(DecisionUnavailable, match=f"OPA server at http://127.0.0.1:{port}"):
        evaluate(engine, "parking", {"proposal": {}})


# -- decide ----------------------------------------------------------------------------------

ALLOWED = PermitResult(True, ("claims-agent", "claims", "claim.approve", "propose"), ("x",))
REFUSED = PermitResult(False, ("booking-agent", "parking", "refund.issue", "propose"), None)
NOTHING = RegoResult(deny=[], hold=[])
DENY = RegoResult(deny=[{"code": "over_hard_limit", "message": "too much"}], hold=[])
HOLD = RegoResult(deny=[], hold=[{"code": "high_value", "message": "large"}])
BOTH = RegoResult(deny=DENY.deny, hold=HOLD.hold)


def codes(reasons: list[Any]) -> list[tuple[str, str]]:
    return [(r.code, r.source) for r in reasons]


@pytest.mark.parametrize("level", [1, 2, 3, 4])
def test_decide_rejects_what_casbin_refuses(level: int) -> None:
    decision = decide(REFUSED, None, level)
    assert decision.verdict == "reject"
    assert codes(decision.reasons) == [("not_permitted", "casbin")]
    message = decision.reasons[0].message
    assert message == "role booking-agent may not propose refund.issue in parking"


@pytest.mark.parametrize("level", [1, 2, 3, 4])
def test_decide_a_policy_deny_beats_its_hold_at_every_level(level: int) -> None:
    decision = decide(ALLOWED, BOTH, level)
    assert decision.verdict == "reject"
    assert codes(decision.reasons) == [("over_hard_limit", "rego")]
    assert decision.recommendation == "reject"


@pytest.mark.parametrize(("level", "verdict"), [(1, "hold"), (2, "execute"), (3, "execute")])
def test_decide_holds_everything_at_level_1_even_when_the_policy_would_execute(
    level: int, verdict: str
) -> None:
    decision = decide(ALLOWED, NOTHING, level)
    assert decision.verdict == verdict
    assert decision.recommendation == "execute"
    if level == 1:
        assert codes(decision.reasons) == [("advisory_level", "gateway")]
        assert "recommends execute" in decision.reasons[0].message
    else:
        assert decision.reasons == []


def test_decide_at_level_1_keeps_the_policys_hold_and_recommends_hold() -> None:
    decision = decide(ALLOWED, HOLD, 1)
    assert decision.verdict == "hold"
    assert decision.recommendation == "hold"
    assert codes(decision.reasons) == [("high_value", "rego"), ("advisory_level", "gateway")]


def test_decide_level_1_and_a_policy_deny_from_real_rego_rejects(policy: ActivePolicy) -> None:
    body = proposal("parking", "refund.issue", amount="5000", confidence=0.99)
    identity = who("payments-agent")
    permitted = permit(policy.permitter, identity, as_proposal(body))
    rego = evaluate(policy.engine, "parking", _input(body, "payments-agent", 1))
    decision = decide(permitted, rego, 1)
    assert decision.verdict == "reject"
    assert codes(decision.reasons) == [("over_hard_limit", "rego")]


# -- the bundle's Rego unit tests ------------------------------------------------------------


def test_the_default_bundles_rego_tests_all_pass() -> None:
    results = RegorusEngine(load_bundle(POLICIES), include_tests=True).run_tests()
    assert len(results) >= 10
    failed = [(r.module, r.name, r.error) for r in results if not r.passed]
    assert failed == []
    assert ("rego/claims_test.rego", "test_claim_over_hard_limit_is_denied") in {
        (r.module, r.name) for r in results
    }


def test_a_failing_rego_test_is_reported_failed(tmp_path: Path) -> None:
    root = copy_bundle(tmp_path)
    tests = root / "rego" / "parking_test.rego"
    tests.write_text(
        tests.read_text()
        + "\ntest_a_large_refund_is_allowed if {\n"
        + '\tcount(parking.deny) == 0 with input as refund("5000")\n}\n'
    )
    results = {r.name: r for r in RegorusEngine(load_bundle(root), include_tests=True).run_tests()}
    assert not results["test_a_large_refund_is_allowed"].passed
    assert results["test_a_large_refund_is_allowed"].module == "rego/parking_test.rego"
    assert results["test_refund_over_hard_limit_is_denied"].passed
    assert sum(not r.passed for r in results.values()) == 1
