"""Personal data end to end: sealed when decided, kept nowhere else, erased on request.

What a data protection officer and a regulator would check, on a real gateway over HTTP, on
SQLite and PostgreSQL: the bundle's personal fields are sealed in the ledger, the policy still
sees them, and no other table (answers, approval and audit summaries, outbox, figures) keeps
them; after ``POST /v1/erasures`` (or `mandate ledger erase`) the values are in no table and,
on SQLite, in no file, the export verifies, the erasure entry names the subject only by its
keyed digest, the action's view shows the fields as erased, and the webhook never receives
them.
"""

from __future__ import annotations

import hashlib
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from gateway.decision.steps import request_digest
from gateway.schemas import Proposal
from ledger.database import sqlite_file
from ledger.sealing import ERASED_MARK, SEALED_MARK
from tests.approvals.conftest import Hook, Launch
from tests.approvals.harness import (
    Live,
    assert_problem,
    copy_bundle,
    unique,
    verified_ledger,
    vote,
    wait_for,
)
from tests.conftest import Database
from tests.ledger.test_cli import MANDATE, clean_env
from tests.ui.test_bound_pages import _csrf

ZOE = {
    "customer": "C-1001",
    "customer_email": "zoe.qwerty@example.org",
    "customer_name": "Zoë Qwerty",
}
ANN = {
    "customer": "C-2002",
    "customer_email": "ann.other@example.org",
    "customer_name": "Ann Other",
}
HAL = {
    "claimant": "H-3003",
    "claimant_email": "hal.claims@example.org",
    "claimant_name": "Hal Claimant",
}
PERSONAL = ("params.customer", "params.customer_email", "params.customer_name")
# A hold that quotes the customer's name and email: the policy sees them, no record keeps them.
VIP_RULE = """
hold contains {
    "code": "vip",
    "message": sprintf("VIP %v <%v> books by hand", [
        input.proposal.params.customer_name,
        input.proposal.params.customer_email,
    ]),
} if {
    input.proposal.action_type == "booking.create"
    input.proposal.context.vip == true
}
"""


def values(person: dict[str, str]) -> list[str]:
    return list(person.values())


def found(blob: bytes, *texts: str) -> list[str]:
    return [text for text in texts if text.encode() in blob]


def cells_by_table(engine: Engine) -> dict[str, bytes]:
    """Every value of every row of every table of the database (the gateway's and the
    ledger's), per table, as bytes to search."""
    tables: dict[str, bytes] = {}
    with engine.connect() as conn:
        for table in sa.inspect(conn).get_table_names():
            cells: list[bytes] = []
            for row in conn.execute(sa.text(f'SELECT * FROM "{table}"')):
                for value in row:
                    if isinstance(value, bytes | memoryview):
                        cells.append(bytes(value))
                    elif value is not None:
                        cells.append(str(value).encode())
            tables[table] = b"\n".join(cells)
    return tables


def holding(engine: Engine, *texts: str) -> dict[str, list[str]]:
    """Which tables hold which of ``texts``."""
    return {
        table: hits
        for table, blob in cells_by_table(engine).items()
        if (hits := found(blob, *texts))
    }


def sqlite_files(engine: Engine) -> dict[str, bytes]:
    path = sqlite_file(engine)
    assert path is not None
    return {
        f"{path.name}{suffix}": Path(f"{path}{suffix}").read_bytes()
        for suffix in ("", "-wal", "-shm")
        if Path(f"{path}{suffix}").exists()
    }


def booking(person: dict[str, str], **context: Any) -> dict[str, Any]:
    return {
        "workflow": "parking",
        "action_type": "booking.create",
        "resource": f"lot-7/space-{unique('space')}",
        "params": person | {"start": "2026-12-01T08:00:00Z"},
        "confidence": 0.95,
        "context": context,
        "idempotency_key": unique("booking"),
    }


def propose(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/v1/actions", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert isinstance(answer, dict)
    return answer


def with_vip_rule(tmp_path: Path) -> Path:
    bundle = copy_bundle(tmp_path / "vip", lambda data: None)
    rego = bundle / "rego" / "parking.rego"
    rego.write_text(rego.read_text() + VIP_RULE)
    return bundle


def erase(live: Live, data_subject: str, reason: str = "GDPR art. 17 request 88") -> Any:
    response = live.as_role("governor").post(
        "/v1/erasures", json={"data_subject": data_subject, "reason": reason}
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_personal_data_is_sealed_kept_nowhere_else_and_erased_from_every_table_and_file(
    database: Database, launch: Launch, tmp_path: Path
) -> None:
    live = launch(database, policies=with_vip_rule(tmp_path))
    engine = live.runtime.engine
    agent = live.as_role("booking-agent")
    booked = propose(agent, booking(ZOE))
    assert booked["verdict"] == "execute"
    # The policy saw the name and email (its rule fired on them); its message quotes neither.
    vip = propose(agent, booking(ZOE, vip=True))
    assert vip["verdict"] == "hold"
    assert [r["code"] for r in vip["reasons"]] == ["vip"]
    assert vip["reasons"][0]["message"] == (
        "VIP [sealed params.customer_name] <[sealed params.customer_email]> books by hand"
    )
    other = propose(agent, booking(ANN))
    claim = propose(
        live.as_role("claims-agent"),
        {
            "workflow": "claims",
            "action_type": "claim.approve",
            "resource": "claim/CL-9",
            "params": HAL | {"amount": "800"},
            "confidence": 0.97,
            "idempotency_key": unique("claim"),
        },
    )
    assert claim["verdict"] == "execute"
    for answer in (booked, vip, other, claim):
        assert found(orjson.dumps(answer), *values(ZOE), *values(ANN), *values(HAL)) == []

    # Only the ledger's sealed table holds them: the entries hold commitments, and no answer,
    # summary, outbox or figures row quotes them.
    assert holding(engine, *values(ZOE)) == {"ledger_sealed": values(ZOE)}
    assert holding(engine, *values(HAL)) == {"ledger_sealed": values(HAL)}
    seen = live.as_role("approver").get(f"/v1/actions/{vip['action_id']}").json()
    proposed = seen["timeline"][0]["body"]
    assert proposed["proposal"]["params"] == ZOE | {"start": "2026-12-01T08:00:00Z"}
    assert proposed["sealed"] == list(PERSONAL)

    erasure = erase(live, "C-1001")
    assert erasure["erasure_seq"] is not None
    assert sorted(erasure["actions"]) == sorted([booked["action_id"], vip["action_id"]])
    assert sorted(f["path"] for f in erasure["erased"]) == sorted(
        [f"proposal.{p}" for p in PERSONAL] * 2
    )
    assert erasure["subject_digest"] != hashlib.sha256(b"C-1001").hexdigest()

    # Gone from every table, and on SQLite from the database file and its WAL, while the
    # gateway runs; the other subjects' are still sealed there.
    assert holding(engine, *values(ZOE)) == {}
    assert holding(engine, *values(ANN)) == {"ledger_sealed": values(ANN)}
    if database.backend == "sqlite":
        for name, data in sqlite_files(engine).items():
            assert found(data, *values(ZOE)) == [], name
        assert found(b"".join(sqlite_files(engine).values()), ANN["customer_email"])

    # The export verifies; the erasure entry names the subject by its keyed digest only.
    ledger = verified_ledger(live.url, live.settings, tmp_path)
    [entry] = ledger.of("erasure")
    assert entry["seq"] == erasure["erasure_seq"]
    assert entry["subject"] == erasure["subject_digest"]
    assert entry["body"]["reason"] == "GDPR art. 17 request 88"
    assert found(orjson.dumps(entry), *values(ZOE)) == []
    assert found(orjson.dumps(ledger.entries), *values(ZOE), *values(ANN), *values(HAL)) == []

    # The action shows the fields as erased, by that entry.
    seen = live.as_role("approver").get(f"/v1/actions/{vip['action_id']}").json()
    params = seen["timeline"][0]["body"]["proposal"]["params"]
    for field in ("customer", "customer_email", "customer_name"):
        assert set(params[field]) == {SEALED_MARK, ERASED_MARK}
        assert params[field][ERASED_MARK] == erasure["erasure_seq"]
    assert params["start"] == "2026-12-01T08:00:00Z"
    assert seen["decision"]["reasons"] == vip["reasons"]
    page = signed_in_page(live, f"/ui/approvals/{vip['approval']['id']}")
    assert f"[erased by ledger entry {erasure['erasure_seq']}]" in page
    assert found(page.encode(), *values(ZOE)) == []

    # Nothing left to erase: said, and nothing written.
    again = erase(live, "C-1001")
    assert again["erasure_seq"] is None
    assert again["subject_digest"] == erasure["subject_digest"]


def signed_in_page(live: Live, path: str) -> str:
    """A page as a signed-in governor gets it."""
    with httpx.Client(base_url=live.url, timeout=30.0) as client:
        csrf = _csrf(client.get("/ui/login").text)
        token = live.token("governor")
        signed = client.post("/ui/login", data={"token": token, "csrf": csrf, "next": "/ui/"})
        assert signed.status_code == 303, signed.text
        page = client.get(path)
        assert page.status_code == 200, page.text
        return page.text


def test_an_action_erased_before_it_is_carried_out_never_reaches_its_webhook(
    sqlite_database: Database, launch: Launch, hook: Hook
) -> None:
    live = launch(sqlite_database, webhooks={"parking": hook.url})
    payments = live.as_role("payments-agent")
    refund = {
        "workflow": "parking",
        "action_type": "refund.issue",
        "resource": "booking/B-1",
        "params": ZOE | {"amount": "20.00"},
        "confidence": 0.99,
        "idempotency_key": unique("refund"),
    }
    first = propose(payments, refund)
    second = propose(payments, refund | {"idempotency_key": unique("refund")})
    assert first["verdict"] == second["verdict"] == "hold"  # refunds start at level 1
    approver = live.as_role("approver")

    # Approved while the data is there: the receiver gets the values (it needs them to act).
    assert vote(approver, first["approval"]["id"], "approve").status_code == 200
    wait_for(lambda: first["action_id"] in hook.delivered(), what="the first refund delivered")
    with hook.receiver.lock:
        sent = orjson.dumps(hook.receiver.done[first["action_id"]])
    assert found(sent, *values(ZOE)) == values(ZOE)

    erasure = erase(live, "C-1001")
    assert vote(approver, second["approval"]["id"], "approve").status_code == 200

    def settled() -> bool:
        shown = approver.get(f"/v1/actions/{second['action_id']}").json()
        return bool(shown["execution"]) and shown["execution"]["status"] == "failed"

    wait_for(settled, what="the erased refund settled")
    shown = approver.get(f"/v1/actions/{second['action_id']}").json()
    assert shown["status"] == "failed"
    outcome = shown["timeline"][-1]
    assert outcome["kind"] == "outcome"
    assert outcome["body"]["detail"]["erased"] is True
    assert (
        f"erased by erasure entry {erasure['erasure_seq']}" in outcome["body"]["detail"]["detail"]
    )
    assert "execution" not in [t["kind"] for t in shown["timeline"]]  # no attempt was made
    with hook.receiver.lock:
        assert hook.receiver.calls[second["action_id"]] == 0  # never called, not even refused


def test_replay_reads_sealed_values_and_counts_what_it_cannot_replay_once_erased(
    sqlite_database: Database, launch: Launch
) -> None:
    live = launch(sqlite_database)
    agent = live.as_role("booking-agent")
    for person in (ZOE, ZOE, ANN):
        propose(agent, booking(person))
    admin = live.as_role("policy-admin")

    def replay() -> dict[str, Any]:
        response = admin.post("/v1/policies/replay", json={})
        for _ in range(100):  # the replay before may hold the process's one replay a moment
            if response.status_code != 409:
                break
            time.sleep(0.05)
            response = admin.post("/v1/policies/replay", json={})
        assert response.status_code == 200, response.text
        report = orjson.loads(response.text.strip().splitlines()[-1])
        assert isinstance(report, dict)
        return report

    before = replay()
    assert (before["decisions"], before["changed"], before["erased"]) == (3, 0, 0)
    assert before["input_mismatches"] == 0  # the sealed values read back rebuild every input
    erase(live, "C-1001")
    after = replay()
    assert (after["decisions"], after["changed"], after["erased"]) == (1, 0, 2)
    assert len(after["erased_seqs"]) == 2
    assert after["input_mismatches"] == 0


def test_a_held_proposal_whose_personal_data_was_erased_is_rejected_when_decided_again(
    sqlite_database: Database, launch: Launch, tmp_path: Path
) -> None:
    live = launch(sqlite_database)
    held = propose(live.as_role("booking-agent"), booking(ZOE, vip=True) | {"confidence": 0.5})
    assert held["verdict"] == "hold"
    erasure = erase(live, "C-1001")
    # A new bundle in force: the next vote decides the proposal again, from the ledger.
    bundle = copy_bundle(tmp_path / "new", lambda data: data.update(note="new"))
    files = {str(p.relative_to(bundle)): p.read_text() for p in bundle.rglob("*") if p.is_file()}
    activated = live.as_role("policy-admin").post(
        "/v1/policies", json={"files": files, "reason": "a new bundle"}
    )
    assert activated.status_code in (200, 201), activated.text
    approver = live.as_role("approver")
    voted = vote(approver, held["approval"]["id"], "approve")
    assert_problem(voted, 409)  # re-evaluated instead of counted, as for any new bundle
    assert "re-evaluated: reject (personal_data_erased" in voted.json()["detail"]
    shown = approver.get(f"/v1/actions/{held['action_id']}").json()
    assert shown["status"] == "rejected"
    decided = shown["timeline"][-1]["body"]
    assert [r["code"] for r in decided["reasons"]] == ["personal_data_erased"]
    assert decided["reasons"][0]["message"] == (
        "its personal data (params.customer, params.customer_email, params.customer_name) was "
        f"erased by erasure entry {erasure['erasure_seq']}: it cannot be decided again"
    )


@pytest.mark.parametrize(
    ("params", "context", "field"),
    [
        ({"customer_email": ZOE["customer_email"]}, {}, "params.customer"),
        ({"customer": 1001, "customer_email": ZOE["customer_email"]}, {}, "params.customer"),
        ({"customer": "C" * 257, "customer_name": ZOE["customer_name"]}, {}, "params.customer"),
        (ZOE, {"ref": "C-1001"}, "context.ref"),
        (ZOE, {"note": {SEALED_MARK: "ab"}}, "context.note.$sealed"),
    ],
    ids=[
        "no-data-subject",
        "id-not-a-string",
        "id-too-long",
        "id-in-clear-elsewhere",
        "forged-seal",
    ],
)
def test_personal_data_that_could_not_be_erased_is_refused_naming_the_field(
    sqlite_database: Database,
    launch: Launch,
    params: dict[str, Any],
    context: dict[str, Any],
    field: str,
) -> None:
    live = launch(sqlite_database)
    before = live.runtime.ledger.size()
    body = booking({}) | {"params": params, "context": context}
    problem = assert_problem(live.as_role("booking-agent").post("/v1/actions", json=body), 422)
    assert [e["field"] for e in problem["errors"]] == [field]
    assert found(orjson.dumps(problem), ZOE["customer_email"]) == []
    assert live.runtime.ledger.size() == before


def test_an_idempotency_key_tells_other_personal_values_apart_without_a_plain_hash(
    sqlite_database: Database, launch: Launch
) -> None:
    live = launch(sqlite_database)
    agent = live.as_role("booking-agent")
    body = booking(ZOE)
    first = propose(agent, body)
    assert propose(agent, body) == first  # the retry is answered as the first time
    other = body | {"params": body["params"] | {"customer_email": "someone.else@example.org"}}
    assert_problem(agent.post("/v1/actions", json=other), 409)
    # The recorded digest is no plain hash of the proposal: it could test a guess forever.
    recorded = live.runtime.ledger.entry(first["ledger"]["proposal_seq"]).body
    assert recorded["request_digest"] != request_digest(Proposal.model_validate(body))


def test_only_an_unbound_governor_erases(sqlite_database: Database, launch: Launch) -> None:
    live = launch(sqlite_database)
    propose(live.as_role("booking-agent"), booking(ZOE))
    request = {"data_subject": "C-1001", "reason": "art. 17"}
    for client in (live.as_role("approver"), live.as_role("governor", workflow="parking")):
        assert_problem(client.post("/v1/erasures", json=request), 403)
    named = {"data_subject": "C-1001", "reason": "request of C-1001"}
    problem = assert_problem(live.as_role("governor").post("/v1/erasures", json=named), 422)
    assert [e["field"] for e in problem["errors"]] == ["reason"]
    assert holding(live.runtime.engine, "zoe.qwerty@example.org") == {
        "ledger_sealed": ["zoe.qwerty@example.org"]
    }


def test_mandate_ledger_erase_then_export_verifies(
    sqlite_database: Database, launch: Launch, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    live = launch(sqlite_database, data_dir=data)
    propose(live.as_role("booking-agent"), booking(ZOE))
    live.stop()  # the gateway's readers would keep the WAL from being emptied at once
    env = clean_env(MANDATE_DATA_DIR=str(data), MANDATE_DATABASE_URL=sqlite_database.url)

    def mandate(*args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(MANDATE), *map(str, args)],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip

    erased = mandate("ledger", "erase", "--data-subject", "C-1001", "--reason", "art. 17 #88")
    assert erased.returncode == 0, erased.stderr
    seq = int(erased.stdout)
    assert "erased 3 values of 1 action " in erased.stderr
    assert found(erased.stderr.encode(), *values(ZOE)) == []
    again = mandate("ledger", "erase", "--data-subject", "C-1001", "--reason", "art. 17 #88")
    assert (again.returncode, again.stdout) == (0, "")
    assert "nothing sealed" in again.stderr

    out = tmp_path / "ledger.jsonl"
    assert mandate("ledger", "export", "--out", out).returncode == 0
    key = tmp_path / "mandate.pub"
    key.write_text(mandate("ledger", "public-key").stdout)
    verified = mandate("ledger", "verify", out, "--public-key", key)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    exported = out.read_bytes()
    assert found(exported, *values(ZOE)) == []
    assert orjson.loads(exported.splitlines()[seq])["kind"] == "erasure"
