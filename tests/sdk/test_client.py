"""MandateClient against the real gateway on loopback: every method, every error class, wait(),
and retries through a proxy that fails on purpose."""

from __future__ import annotations

import subprocess
import sys
import time
from decimal import Decimal
from typing import Any

import pytest

from gateway.client import (
    Conflict,
    Forbidden,
    InvalidInput,
    InvalidProposal,
    MandateClient,
    MandateError,
    NotFound,
    Unauthorized,
    Unavailable,
    Unreachable,
    WaitTimeout,
)
from gateway.schemas import ActionView, ApprovalView, Problem, Verdict
from tests.sdk.conftest import (
    Later,
    Live,
    approve_when_held,
    closed_port,
    executes,
    held,
    key,
    rejected,
)
from tests.sdk.faults import Plan, faulty_proxy


def test_propose_get_action_and_report_outcome(live: Live) -> None:
    with live.client("booking-agent") as bot:
        verdict = bot.propose(**executes())
        assert isinstance(verdict, Verdict)
        assert verdict.verdict == "execute"
        assert verdict.trace.casbin.allowed
        assert verdict.ledger.decision_seq == verdict.ledger.proposal_seq + 1

        action = bot.get_action(verdict.action_id)
        assert isinstance(action, ActionView)
        assert action.status == "approved"
        assert action.case_type == "booking.create"  # the only case type booking.create lists
        assert verdict.trace.autonomy.case_type_source == "only"
        assert [e["kind"] for e in action.timeline][:2] == ["proposal", "decision"]

        done = bot.report_outcome(verdict.action_id, True, {"booking": "B-7"})
        assert done.status == "succeeded"
        [outcome] = [e for e in done.timeline if e["kind"] == "outcome"]
        assert outcome["body"]["status"] == "succeeded"
        assert outcome["body"]["detail"] == {"booking": "B-7"}

        with pytest.raises(Conflict) as again:
            bot.report_outcome(verdict.action_id, "failed")
    assert again.value.status == 409
    assert again.value.problem is not None
    assert again.value.problem.title == "conflict"
    assert str(again.value) == again.value.problem.detail
    assert "not waiting for an outcome" in str(again.value)


def test_a_failed_outcome_is_recorded(live: Live) -> None:
    with live.client("booking-agent") as bot:
        verdict = bot.propose(**executes())
        done = bot.report_outcome(verdict.action_id, False, {"error": "lot closed"})
    assert done.status == "failed"
    [outcome] = [e for e in done.timeline if e["kind"] == "outcome"]
    assert outcome["body"] == outcome["body"] | {
        "status": "failed",
        "detail": {"error": "lot closed"},
    }


def test_the_same_key_and_body_give_the_same_verdict_once(live: Live) -> None:
    body = held()
    with live.client("booking-agent") as bot:
        first = bot.propose(**body)
        size = live.ledger_size()
        second = bot.propose(**body)
    assert second.action_id == first.action_id
    assert live.ledger_size() == size  # no new entries


def test_a_key_reused_for_another_body_is_a_conflict(live: Live) -> None:
    body = executes()
    with live.client("booking-agent") as bot:
        bot.propose(**body)
        with pytest.raises(Conflict) as error:
            bot.propose(**(body | {"resource": "lot-7/space-43"}))
    assert error.value.status == 409
    assert body["idempotency_key"] in str(error.value)


def test_a_float_amount_is_an_invalid_proposal_naming_the_field(live: Live) -> None:
    with live.client("payments-agent") as bot, pytest.raises(InvalidProposal) as error:
        bot.propose(**rejected(params={"amount": 20.5}))
    assert isinstance(error.value, InvalidInput)
    assert error.value.status == 422
    assert [e.field for e in error.value.errors] == ["params.amount"]
    assert "decimal string" in error.value.errors[0].message
    assert str(error.value) == error.value.problem.detail  # type: ignore[union-attr]


def test_decimals_are_sent_as_strings(live: Live) -> None:
    with live.client("payments-agent") as bot:
        verdict = bot.propose(**rejected(params={"amount": Decimal("20.00")}))
        action = bot.get_action(verdict.action_id)
    assert verdict.verdict == "hold"  # refunds start at level 1 (advisory)
    assert action.timeline[0]["body"]["proposal"]["params"] == {"amount": "20.00"}


def test_a_bad_token_is_unauthorized(live: Live) -> None:
    with MandateClient(live.url, "mdt_not-a-token") as stranger:
        with pytest.raises(Unauthorized) as error:
            stranger.propose(**executes())
        with pytest.raises(Unauthorized):
            stranger.approvals()
    assert error.value.status == 401
    assert isinstance(error.value.problem, Problem)
    assert error.value.problem.title == "unauthorized"


def test_forbidden(live: Live) -> None:
    with live.client("approver") as approver, pytest.raises(Forbidden) as error:
        approver.propose(**executes())
    assert error.value.status == 403
    assert "may not propose" in str(error.value)

    with live.client("booking-agent") as bot, live.client("booking-agent") as other:
        verdict = bot.propose(**executes())
        with pytest.raises(Forbidden):  # only the proposer reports the outcome
            other.report_outcome(verdict.action_id, True)
        with pytest.raises(Forbidden):  # nor may another executor look at it
            other.get_action(verdict.action_id)


def test_not_found(live: Live) -> None:
    with live.client("approver") as approver:
        with pytest.raises(NotFound) as error:
            approver.get_action("act_000000000000000000000000")
        assert error.value.status == 404
        with pytest.raises(NotFound):
            approver.get_approval("apr_000000000000000000000000")
        with pytest.raises(NotFound):
            approver.decide("apr_000000000000000000000000", "approve")
        with pytest.raises(ValueError, match="not an id"):
            approver.get_action("../approvals")


def test_approvals_list_show_and_decide(live: Live) -> None:
    with live.client("booking-agent") as bot, live.client("approver") as approver:
        verdict = bot.propose(**held(resource="lot-1/space-1"))
        assert verdict.verdict == "hold"
        assert verdict.approval is not None

        pending = approver.approvals()
        assert all(isinstance(a, ApprovalView) for a in pending)
        mine = next(a for a in pending if a.id == verdict.approval.id)
        assert mine.action_id == verdict.action_id
        assert [r.code for r in mine.reasons] == ["low_confidence"]
        assert approver.get_approval(mine.id).status == "pending"

        with pytest.raises(InvalidInput) as no_reason:
            approver.decide(mine.id, "reject")
        assert not isinstance(no_reason.value, InvalidProposal)
        assert [e.field for e in no_reason.value.errors] == ["reason"]

        decided = approver.decide(mine.id, "approve", "looks right")
        assert decided.status == "approved"
        assert decided.votes[0].reason == "looks right"
        assert any(a.id == mine.id for a in approver.approvals("approved"))
        assert all(a.id != mine.id for a in approver.approvals())

        with pytest.raises(Conflict) as closed:
            approver.decide(mine.id, "reject", "changed my mind")
        assert "already voted approve" in str(closed.value)
        assert bot.get_action(verdict.action_id).status == "approved"


def test_voting_twice_counts_once_and_quorum_approves(live: Live) -> None:
    claim: dict[str, Any] = {
        "workflow": "claims",
        "action_type": "claim.approve",
        "resource": "claim/C-9",
        "params": {"amount": "12000"},
        "confidence": 0.97,
        "idempotency_key": key(),
    }
    with (
        live.client("claims-agent") as bot,
        live.client("approver") as first,
        live.client("approver") as second,
    ):
        verdict = bot.propose(**claim)
        assert verdict.approval is not None
        assert verdict.approval.quorum == 2
        once = first.decide(verdict.approval.id, "approve")
        twice = first.decide(verdict.approval.id, "approve")
        assert (once.status, once.approvals) == (twice.status, twice.approvals) == ("pending", 1)
        assert second.decide(verdict.approval.id, "approve").status == "approved"
        assert bot.get_action(verdict.action_id).status == "approved"


def test_the_proposer_may_not_approve(live: Live) -> None:
    with live.client("booking-agent") as bot, live.client("approver") as approver:
        verdict = bot.propose(**held())
        assert verdict.approval is not None
        with pytest.raises(Forbidden):
            bot.decide(verdict.approval.id, "approve")
        approver.decide(verdict.approval.id, "reject", "tidy up")


def test_wait_returns_when_an_approver_approves(live: Live) -> None:
    with live.client("booking-agent") as bot:
        verdict = bot.propose(**held(resource="lot-2/space-2"))
        approver = Later(0.3, approve_when_held(live, "lot-2/space-2"))
        action = bot.wait(verdict.action_id, timeout=20)
        approver.join()
    assert action.status == "approved"
    assert "approval" in [e["kind"] for e in action.timeline]


def test_wait_returns_when_an_approver_rejects(live: Live) -> None:
    with live.client("booking-agent") as bot:
        verdict = bot.propose(**held(resource="lot-3/space-3"))
        approver = Later(
            0.3, approve_when_held(live, "lot-3/space-3", decision="reject", reason="full")
        )
        action = bot.wait(verdict.action_id, timeout=20)
        approver.join()
    assert action.status == "rejected"
    assert action.timeline[-1]["kind"] == "rejection"
    assert action.timeline[-1]["body"]["reason"] == "full"


def test_wait_returns_an_expired_action(expiring: Live) -> None:
    with expiring.client("booking-agent") as bot:
        verdict = bot.propose(**held())
        action = bot.wait(verdict.action_id, timeout=20)
    assert action.status == "expired"
    assert action.timeline[-1]["kind"] == "expiry"


def test_wait_times_out_on_an_action_still_held(live: Live) -> None:
    with live.client("booking-agent") as bot:
        verdict = bot.propose(**held())
        started = time.monotonic()
        with pytest.raises(WaitTimeout) as error:
            bot.wait(verdict.action_id, timeout=0.5)
    assert 0.5 <= time.monotonic() - started < 5
    assert isinstance(error.value, TimeoutError)
    assert isinstance(error.value, MandateError)
    assert error.value.action.status == "held"
    assert error.value.status is None


def test_wait_on_a_decided_action_returns_at_once(live: Live) -> None:
    with live.client("booking-agent") as bot:
        verdict = bot.propose(**rejected())
        assert verdict.verdict == "reject"
        assert bot.wait(verdict.action_id, timeout=0).status == "rejected"


# -- retries ------------------------------------------------------------------------------------


def test_an_unreachable_gateway_is_tried_a_bounded_number_of_times() -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    with (
        MandateClient(url, "mdt_x", retries=2, backoff=0.01) as client,
        pytest.raises(Unreachable) as error,
    ):
        client.propose(**executes())
    assert isinstance(error.value, Unavailable)
    assert error.value.status is None
    assert error.value.problem is None
    assert url in str(error.value)


def test_a_retry_after_a_lost_answer_sends_the_same_key(live: Live) -> None:
    # The gateway decides, the answer never arrives; the retry carries the same key, so the
    # gateway answers the first verdict again and writes nothing more.
    plan = Plan(drop_after_forwarding={"POST /v1/actions": 1})
    with faulty_proxy(live.url, plan) as url:
        size = live.ledger_size()
        with MandateClient(url, live.token("booking-agent"), backoff=0.01) as bot:
            verdict = bot.propose(**held())  # a hold: nothing is dispatched afterwards
    assert plan.forwarded == ["POST /v1/actions", "POST /v1/actions"]
    assert live.ledger_size() == size + 2  # one proposal, one decision
    assert verdict.verdict == "hold"


def test_503_is_retried_with_backoff_then_given_up(live: Live) -> None:
    plan = Plan(unavailable={"POST /v1/actions": 2})
    with faulty_proxy(live.url, plan) as url:
        with MandateClient(url, live.token("booking-agent"), backoff=0.01) as bot:
            assert bot.propose(**executes()).verdict == "execute"
        assert plan.seen == ["POST /v1/actions"] * 3

        plan.unavailable["POST /v1/actions"] = 5
        with (
            MandateClient(url, live.token("booking-agent"), retries=1, backoff=0.01) as bot,
            pytest.raises(Unavailable) as error,
        ):
            bot.propose(**executes())
    assert error.value.status == 503
    assert str(error.value) == "injected by the test proxy"


def test_an_outcome_whose_answer_was_lost_is_not_reported_twice(live: Live) -> None:
    with live.client("booking-agent") as bot:
        verdict = bot.propose(**executes())
        token = bot._http.headers["Authorization"].removeprefix("Bearer ")
    plan = Plan(drop_after_forwarding={"POST /v1/actions/": 1})
    with faulty_proxy(live.url, plan) as url, MandateClient(url, token, backoff=0.01) as bot:
        done = bot.report_outcome(verdict.action_id, "succeeded", {"n": 1})
        assert done.status == "succeeded"
        assert [e["kind"] for e in done.timeline].count("outcome") == 1
        # A genuinely different second report is still refused.
        with pytest.raises(Conflict):
            bot.report_outcome(verdict.action_id, "failed")


def test_the_client_closes_with_its_block(live: Live) -> None:
    with live.client("booking-agent") as bot:
        pass
    assert bot._http.is_closed


def test_the_sdk_imports_none_of_the_server() -> None:
    code = (
        "import sys, gateway.client\n"
        "heavy = {'fastapi', 'starlette', 'sqlalchemy', 'casbin', 'uvicorn', 'ledger'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    found = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert found.stdout.strip() == "[]"
