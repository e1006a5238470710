"""Liveness without a token; readiness and metrics with one; the metrics count what happened."""

from __future__ import annotations

import pytest

from tests.gateway.support import Gateway, assert_problem, http_client, proposal, wait_for
from tests.scrape import Samples, total
from tests.scrape import scrape as scrape_client


def scrape(gateway: Gateway) -> Samples:
    return scrape_client(gateway.as_role("auditor"))


def decisions(samples: Samples, verdict: str) -> float:
    return total(samples, "mandate_decisions_total", verdict=verdict)


def test_healthz_answers_without_a_token(sqlite_gateway: Gateway) -> None:
    with http_client(sqlite_gateway.url) as client:
        response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.parametrize("path", ["/readyz", "/metrics"])
def test_readyz_and_metrics_need_a_token(sqlite_gateway: Gateway, path: str) -> None:
    with http_client(sqlite_gateway.url) as client:
        assert_problem(client.get(path), 401)
    with http_client(sqlite_gateway.url, {"Authorization": "Bearer mdt_wrong"}) as client:
        assert_problem(client.get(path), 401)
    assert sqlite_gateway.as_role("booking-agent").get(path).status_code == 200


def test_readyz_checks_every_part_of_the_decision_path(gateway: Gateway) -> None:
    response = gateway.as_role("governor").get("/readyz")
    assert response.status_code == 200
    ready = response.json()
    assert ready["status"] == "ready"
    assert set(ready["checks"]) >= {"database", "ledger", "signing_key", "policy"}
    assert ready["checks"]["policy"].startswith("ok (regorus")


def test_metrics_count_decisions_by_verdict_and_follow_the_ledger(gateway: Gateway) -> None:
    booking = gateway.as_role("booking-agent")
    claims = gateway.as_role("claims-agent")
    before = scrape(gateway)
    assert before[("mandate_ledger_entries", ())] == gateway.ledger_size()

    execute = proposal("parking", "booking.create", confidence=0.95)
    sent = [
        (booking, execute),
        (booking, proposal("parking", "booking.create", confidence=0.95)),
        (booking, proposal("parking", "booking.create", confidence=0.5)),
        (booking, proposal("parking", "refund.issue", amount="20")),
        (claims, proposal("claims", "claim.approve", amount="60000", confidence=0.97)),
    ]
    for client, body in sent:
        assert client.post("/v1/actions", json=body).status_code == 200

    # Executions are appended in the background: wait until the gauge and the ledger agree.
    assert wait_for(
        lambda: scrape(gateway)[("mandate_ledger_entries", ())] == gateway.ledger_size()
    )
    after = scrape(gateway)
    assert decisions(after, "execute") - decisions(before, "execute") == 2
    assert decisions(after, "hold") - decisions(before, "hold") == 1
    assert decisions(after, "reject") - decisions(before, "reject") == 2
    assert after[("mandate_ledger_entries", ())] >= before[("mandate_ledger_entries", ())] + 10
    latency = total(after, "mandate_decision_seconds_count")
    assert latency - total(before, "mandate_decision_seconds_count") == 5
    decided = total(after, "mandate_decisions_total", workflow="claims", case_type="claim.approve")
    assert decided - total(before, "mandate_decisions_total", workflow="claims") == 1

    # A retry answered from the idempotency record adds no entry: the gauge must not move back.
    assert booking.post("/v1/actions", json=execute).status_code == 200
    retried = scrape(gateway)[("mandate_ledger_entries", ())]
    assert retried >= after[("mandate_ledger_entries", ())]
    assert wait_for(
        lambda: scrape(gateway)[("mandate_ledger_entries", ())] == gateway.ledger_size()
    )


def test_metrics_say_what_waits_for_people_and_what_ended_by_case_type(gateway: Gateway) -> None:
    booking = gateway.as_role("booking-agent")
    governor = gateway.as_role("governor")
    before = scrape(gateway)
    assert before[("mandate_database_up", ())] == 1

    held = booking.post("/v1/actions", json=proposal("parking", "booking.create", confidence=0.5))
    assert held.json()["verdict"] == "hold"
    done = booking.post("/v1/actions", json=proposal("parking", "booking.create", confidence=0.95))
    assert done.json()["verdict"] == "execute"
    reported = booking.post(
        f"/v1/actions/{done.json()['action_id']}/outcome", json={"status": "succeeded"}
    )
    assert reported.status_code == 200, reported.text
    changed = governor.post(
        "/v1/autonomy/parking/refund.issue", json={"level": 2, "reason": "proven in the pilot"}
    )
    assert changed.status_code == 200, changed.text
    checkpoint = gateway.as_role("auditor").get("/v1/ledger/checkpoint")
    assert checkpoint.status_code == 200, checkpoint.text

    after = scrape(gateway)
    booking_create = {"workflow": "parking", "case_type": "booking.create"}
    assert total(after, "mandate_approvals_pending", **booking_create) == 1
    assert total(after, "mandate_approvals_pending_oldest_seconds", **booking_create) >= 0
    for code in {reason["code"] for reason in held.json()["reasons"]}:
        name, labels = "mandate_decision_reasons_total", {"verdict": "hold", "reason": code}
        assert total(after, name, **labels, **booking_create) == 1
        assert total(before, name, **labels) == 0
    outcomes = "mandate_outcomes_total"
    assert total(after, outcomes, status="succeeded", **booking_create) == 1
    refund = {"workflow": "parking", "case_type": "refund.issue"}
    assert total(after, "mandate_autonomy_level", **refund) == 2
    assert total(after, "mandate_autonomy_level", workflow="claims") >= 1  # every case type
    assert total(after, "mandate_autonomy_changes_total", event="set", **refund) == 1
    assert total(after, "mandate_autonomy_changes_total", event="promotion") == 0
    assert after[("mandate_ledger_checkpoint_age_seconds", ())] >= 0
    # What came after the latest checkpoint is not covered yet (the checkpoint's own entry
    # follows the entries it covers).
    covered = checkpoint.json()["size"] + 1
    assert (
        after[("mandate_ledger_unsigned_entries", ())]
        == after[("mandate_ledger_entries", ())] - covered
    )
    # One process here: it takes the signer lease on its writer's first tick.
    assert wait_for(lambda: scrape(gateway)[("mandate_ledger_signer", ())] == 1)
