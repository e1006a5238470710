"""Liveness without a token; readiness and metrics with one; the metrics count what happened."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.gateway.support import Gateway, assert_problem, http_client, proposal, wait_for


def scrape(gateway: Gateway) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = gateway.as_role("auditor").get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def decisions(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], verdict: str) -> float:
    return samples.get(("mandate_decisions_total", (("verdict", verdict),)), 0.0)


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
    latency = after[("mandate_decision_seconds_count", ())]
    assert latency - before.get(("mandate_decision_seconds_count", ()), 0.0) == 5

    # A retry answered from the idempotency record adds no entry: the gauge must not move back.
    assert booking.post("/v1/actions", json=execute).status_code == 200
    retried = scrape(gateway)[("mandate_ledger_entries", ())]
    assert retried >= after[("mandate_ledger_entries", ())]
    assert wait_for(
        lambda: scrape(gateway)[("mandate_ledger_entries", ())] == gateway.ledger_size()
    )
