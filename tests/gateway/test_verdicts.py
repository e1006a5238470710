"""The issue's verdict table, over HTTP, on SQLite and PostgreSQL: each verdict with its reasons,
trace, ledger entries, approval and timeline, and reproducible from what the ledger holds."""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any, NamedTuple

import pytest
import rfc8785

from gateway.decision.steps import rego_input
from gateway.identity import Identity
from gateway.policy.bundle import load_bundle
from gateway.policy.rego import RegorusEngine
from tests.gateway.support import POLICIES, Gateway, proposal


class Row(NamedTuple):
    role: str
    body: dict[str, Any]
    verdict: str
    level: int
    reasons: list[tuple[str, str]]  # (code, source)
    recommendation: str


TABLE = {
    "booking-create-confident": Row(
        "booking-agent",
        proposal("parking", "booking.create", confidence=0.95),
        "execute",
        3,
        [],
        "execute",
    ),
    "booking-create-unsure": Row(
        "booking-agent",
        proposal("parking", "booking.create", confidence=0.50),
        "hold",
        3,
        [("low_confidence", "rego")],
        "hold",
    ),
    "booking-agent-refund": Row(
        "booking-agent",
        proposal("parking", "refund.issue", amount="20"),
        "reject",
        1,
        [("not_permitted", "casbin")],
        "reject",
    ),
    "small-refund-advisory": Row(
        "payments-agent",
        proposal("parking", "refund.issue", amount="20", confidence=0.99),
        "hold",
        1,
        [("advisory_level", "gateway")],
        "execute",
    ),
    "refund-over-hard-limit": Row(
        "payments-agent",
        proposal("parking", "refund.issue", amount="5000", confidence=0.99),
        "reject",
        1,
        [("over_hard_limit", "rego")],
        "reject",
    ),
    "small-claim": Row(
        "claims-agent",
        proposal("claims", "claim.approve", amount="800", confidence=0.97),
        "execute",
        3,
        [],
        "execute",
    ),
    "claim-over-review": Row(
        "claims-agent",
        proposal("claims", "claim.approve", amount="12000", confidence=0.97),
        "hold",
        3,
        [("high_value", "rego")],
        "hold",
    ),
    "claim-over-hard-limit": Row(
        "claims-agent",
        proposal("claims", "claim.approve", amount="60000", confidence=0.97),
        "reject",
        3,
        [("over_hard_limit", "rego")],
        "reject",
    ),
}
QUORUM = {"parking": 1, "claims": 2}
STATUS = {"execute": "approved", "hold": "held", "reject": "rejected"}


def _time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.mark.parametrize("row", TABLE.values(), ids=TABLE.keys())
def test_the_verdict_table(gateway: Gateway, row: Row) -> None:
    executor = gateway.as_role(row.role)
    auditor = gateway.as_role("auditor")
    size_before = gateway.ledger_size()

    response = executor.post("/v1/actions", json=row.body)

    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["verdict"] == row.verdict
    assert [(r["code"], r["source"]) for r in answer["reasons"]] == row.reasons
    assert all(r["message"] for r in answer["reasons"])
    assert answer["action_id"].startswith("act_")

    # The trace: Casbin's request and answer, the Rego query and input digest, the level.
    trace = answer["trace"]
    workflow, action_type = row.body["workflow"], row.body["action_type"]
    assert trace["casbin"]["request"] == [row.role, workflow, action_type, "propose"]
    assert trace["casbin"]["allowed"] is (row.reasons[:1] != [("not_permitted", "casbin")])
    if trace["casbin"]["allowed"]:
        assert trace["casbin"]["matched"][0] == row.role
        assert trace["rego"]["output"] is not None
        output = trace["rego"]["output"]
        codes = {r["code"] for r in output["deny"] + output["hold"]}
        assert codes == {code for code, source in row.reasons if source == "rego"}
    else:
        assert trace["casbin"]["matched"] == "deny-by-default"
        assert trace["rego"]["output"] is None  # nothing is evaluated for what Casbin refuses
    assert trace["rego"]["engine"] == "regorus"
    assert trace["rego"]["query"] == [
        f"data.mandate.workflows.{workflow}.deny",
        f"data.mandate.workflows.{workflow}.hold",
    ]
    assert len(trace["rego"]["input_digest"]) == 64
    assert trace["autonomy"]["level"] == row.level
    assert trace["bundle_digest"] == load_bundle(POLICIES).digest
    assert trace["recommendation"] == row.recommendation

    # Holds wait for an approval that expires after the bundle's 24 hours.
    if row.verdict == "hold":
        approval = answer["approval"]
        assert approval["id"].startswith("apr_")
        assert approval["quorum"] == QUORUM[workflow]
        expires = _time(approval["expires_at"]) - _time(trace["decided_at"])
        assert expires == dt.timedelta(hours=24)
    else:
        assert answer["approval"] is None

    # Both entries are in the ledger at the seqs the answer names, the verdict recorded.
    seqs = answer["ledger"]
    assert seqs["decision_seq"] == seqs["proposal_seq"] + 1
    assert gateway.ledger_size() >= size_before + 2
    listed = auditor.get(
        "/v1/ledger/entries", params={"start": seqs["proposal_seq"], "limit": 2}
    ).json()
    (proposed, decided) = listed
    assert proposed["seq"] == seqs["proposal_seq"]
    assert proposed["entry"]["kind"] == "proposal"
    assert proposed["entry"]["subject"] == answer["action_id"]
    recorded = proposed["entry"]["body"]["proposal"]
    assert recorded["params"] == row.body["params"]
    assert recorded["idempotency_key"] == row.body["idempotency_key"]
    assert proposed["entry"]["body"]["executor"]["role"] == row.role
    assert decided["seq"] == seqs["decision_seq"]
    assert decided["leaf_hash"] == seqs["leaf_hash"]
    assert decided["entry"]["kind"] == "decision"
    assert decided["entry"]["subject"] == answer["action_id"]
    body = decided["entry"]["body"]
    assert body["verdict"] == row.verdict
    assert body["reasons"] == answer["reasons"]
    assert body["trace"] == trace
    assert body["approval"] == answer["approval"]

    # GET /v1/actions/{id}: the proposer and an auditor see the action and its timeline.
    for reader in (executor, auditor):
        shown = reader.get(f"/v1/actions/{answer['action_id']}")
        assert shown.status_code == 200, shown.text
        view = shown.json()
        assert view["verdict"] == row.verdict
        assert view["status"] == STATUS[row.verdict]
        assert view["decision"] == answer
        timeline = [(e["seq"], e["kind"]) for e in view["timeline"]]
        assert timeline[:2] == [
            (seqs["proposal_seq"], "proposal"),
            (seqs["decision_seq"], "decision"),
        ]
        # What follows (an execution, once dispatched) comes later in the ledger.
        assert all(seq > seqs["decision_seq"] for seq, _ in timeline[2:])
        assert [e["body"] for e in view["timeline"][:2]] == [proposed["entry"]["body"], body]

    # Reproducible from the ledger alone: the same Rego input, digest and output.
    executor_json = proposed["entry"]["body"]["executor"]
    input_ = rego_input(
        recorded,
        Identity(
            executor_json["token_id"],
            executor_json["name"],
            executor_json["role"],
            executor_json["workflow"],
            executor_json["owner"],
        ),
        trace["autonomy"]["case_type"],
        trace["autonomy"]["level"],
        body["stats"],
        trace["decided_at"],
        body["history"],
    )
    # The digest is over the input as recorded: confidence as the decimal string the entry holds.
    as_recorded = rfc8785.dumps({**input_, "proposal": recorded})
    assert hashlib.sha256(as_recorded).hexdigest() == trace["rego"]["input_digest"]
    if trace["rego"]["output"] is not None:
        again = RegorusEngine(load_bundle(POLICIES)).evaluate(workflow, input_)
        assert again.to_json() == trace["rego"]["output"]
