"""Fail closed, with nothing mocked: a policy that errors, a Casbin model that cannot be
evaluated, a ledger that cannot be written. Each gives 503 naming the part, and never an execute
or a decision entry; once the part is back, the gateway decides again."""

from __future__ import annotations

import re
from pathlib import Path

import sqlalchemy as sa

from tests.conftest import Database
from tests.gateway.support import (
    Gateway,
    Serve,
    assert_problem,
    copy_bundle,
    good_booking,
    proposal,
)


def fail_closed_count(gateway: Gateway) -> float:
    text = gateway.as_role("auditor").get("/metrics").text
    match = re.search(r"^mandate_fail_closed_total (\S+)$", text, re.MULTILINE)
    assert match, text
    return float(match.group(1))


def test_a_rego_rule_that_errors_gives_503_and_records_nothing(
    tmp_path: Path, sqlite_database: Database, serve_gateway: Serve
) -> None:
    # A policy bug that only some inputs reach: dividing by a parameter that may be "0".
    bundle = copy_bundle(tmp_path)
    rego = bundle / "rego" / "parking.rego"
    rego.write_text(
        rego.read_text()
        + '\ndeny contains {"code": "uneven_split", "message": "split too fine"} if {\n'
        + "\t100 / to_number(input.proposal.params.split) < 10\n}\n"
    )
    gateway = serve_gateway(sqlite_database, policies=bundle)
    client = gateway.as_role("booking-agent")
    size = gateway.proposals_recorded()

    body = good_booking(params={"split": "0"})
    problem = assert_problem(client.post("/v1/actions", json=body), 503)

    assert problem["title"] == "decision unavailable"
    assert "regorus" in problem["detail"]
    assert "divide by zero" in problem["detail"]
    assert gateway.proposals_recorded() == size  # no proposal, no decision, above all no execute
    assert fail_closed_count(gateway) == 1
    assert gateway.healthy()

    # Inputs the bug does not reach are decided; the failed key was not used up.
    fine = client.post("/v1/actions", json=body | {"params": {"split": "4"}})
    assert fine.status_code == 200, fine.text
    assert fine.json()["verdict"] == "execute"
    assert gateway.proposals_recorded() == size + 2


def test_a_casbin_matcher_that_cannot_be_evaluated_gives_503(
    tmp_path: Path, sqlite_database: Database, serve_gateway: Serve
) -> None:
    bundle = copy_bundle(tmp_path)
    model = bundle / "casbin" / "model.conf"
    good_model = model.read_text()
    model.write_text(good_model.replace("keyMatch(r.obj, p.obj)", "keyMatchTypo(r.obj, p.obj)"))
    gateway = serve_gateway(sqlite_database, policies=bundle)
    token = gateway.token("booking-agent", name="booker")
    client = gateway.client(token)
    size = gateway.proposals_recorded()
    body = good_booking()

    problem = assert_problem(client.post("/v1/actions", json=body), 503)

    assert "Casbin" in problem["detail"]
    assert "keyMatchTypo" in problem["detail"]
    assert gateway.proposals_recorded() == size
    assert gateway.healthy()

    # Fixed and restarted on the same data and key: the same request is decided.
    gateway.stop()
    model.write_text(good_model)
    fixed = serve_gateway(sqlite_database, policies=bundle, data_dir=gateway.settings.data_dir)
    answer = fixed.client(token).post("/v1/actions", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["verdict"] == "execute"


def test_an_unwritable_ledger_gives_503_never_an_execute_and_recovers(
    database: Database, serve_gateway: Serve
) -> None:
    gateway = serve_gateway(database)
    client = gateway.as_role("booking-agent")
    auditor = gateway.as_role("auditor")
    # A held action: nothing is dispatched, so nothing else writes to the ledger meanwhile.
    first = client.post("/v1/actions", json=proposal("parking", "booking.create", confidence=0.5))
    assert first.json()["verdict"] == "hold"
    size = gateway.ledger_size()
    assert auditor.get("/readyz").status_code == 200

    # An operator (or a failing disk) takes the ledger's table away under the running gateway.
    with gateway.engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE ledger_entries RENAME TO ledger_entries_away"))
    try:
        body = good_booking()
        problem = assert_problem(client.post("/v1/actions", json=body), 503)
        assert "ledger" in problem["detail"]
        ready = auditor.get("/readyz")
        assert ready.status_code == 503
        checks = ready.json()["checks"]
        assert checks["ledger"] != "ok"
        assert checks["database"] == "ok"
        assert gateway.healthy()
    finally:
        with gateway.engine.begin() as conn:
            conn.execute(sa.text("ALTER TABLE ledger_entries_away RENAME TO ledger_entries"))

    # Nothing of the failed proposal was kept: no entry, no action, the key still free.
    assert gateway.ledger_size() == size
    with gateway.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM gateway_actions")).scalar_one() == 1
    assert fail_closed_count(gateway) == 1

    # Back: ready again, and the same proposal is decided at the tail, on the same chain.
    assert auditor.get("/readyz").status_code == 200
    again = client.post("/v1/actions", json=body)
    assert again.status_code == 200, again.text
    assert again.json()["verdict"] == "execute"
    assert again.json()["ledger"]["proposal_seq"] == size
    entries = auditor.get("/v1/ledger/entries", params={"start": size - 1, "limit": 2}).json()
    assert entries[1]["entry"]["prev"] == entries[0]["leaf_hash"]
