"""Shadow mode: a candidate decides every new proposal beside the active bundle; only the active
verdict is enforced, and where they differ (or the shadow fails) it is listed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from gateway.policy.bundle import load_bundle
from tests.approvals.conftest import Launch
from tests.approvals.harness import Live, assert_problem, proposal, propose, wait_for
from tests.conftest import Database
from tests.policies.support import (
    POLICIES,
    activate,
    bundle_copy,
    policy_entries,
    raised_review,
    renamed_limit,
)


def claim(amount: str, **extra: Any) -> dict[str, Any]:
    body = proposal("claims", "claim.approve", amount=amount, confidence=0.97)
    body.update(extra)
    return body


def shadow_view(client: httpx.Client, **params: Any) -> dict[str, Any]:
    response = client.get("/v1/policies/shadow", params=params)
    assert response.status_code == 200, response.text
    view = response.json()
    assert isinstance(view, dict)
    return view


def settled(live: Live, client: httpx.Client) -> dict[str, Any]:
    """The shadow view once this process compared everything it was offered."""
    live.runtime.policies.shadow.drain()
    return shadow_view(client)


def test_the_shadow_decides_beside_the_active_bundle_and_lists_what_differs(
    database: Database, launch: Launch, tmp_path: Path
) -> None:
    live = launch(database)
    admin = live.as_role("policy-admin")
    auditor = live.as_role("auditor")
    agent = live.as_role("claims-agent")
    candidate = bundle_copy(tmp_path / "raised", raised_review)
    digest = load_bundle(candidate).digest

    started = activate(admin, candidate, mode="shadow", reason="try a higher review threshold")
    assert started.status_code == 200, started.text
    assert started.json()["policy"]["mode"] == "shadow"
    active = live.runtime.in_force.policy.bundle.digest
    assert active != digest

    # The live verdicts are the active bundle's, whatever the shadow says.
    small = propose(agent, claim("800"), "execute")
    large = propose(agent, claim("12000"), "hold")
    huge = propose(agent, claim("60000"), "reject")
    for answer in (small, large, huge):
        assert answer["trace"]["bundle_digest"] == active

    view = settled(live, auditor)
    assert view["shadow"]["digest"] == digest
    assert view["active_digest"] == active
    assert view["decided_while_running"] == 3
    assert (view["disagreements"], view["verdict_changes"], view["errors"]) == (1, 1, 0)
    assert view["this_process"]["compared"] == 3
    (item,) = view["items"]
    assert item["action_id"] == large["action_id"]
    assert item["decision_seq"] == large["ledger"]["decision_seq"]
    assert (item["workflow"], item["case_type"], item["level"]) == ("claims", "claim.approve", 3)
    assert item["active"]["verdict"] == "hold"
    assert [r["code"] for r in item["active"]["reasons"]] == ["high_value"]
    assert (item["shadow"]["verdict"], item["shadow"]["reasons"]) == ("execute", [])
    assert item["verdict_changed"] is True
    assert item["proposal"]["params"] == {"amount": "12000"}

    # Nothing of the shadow reached the ledger but its start.
    (_, started_entry) = policy_entries(live)
    assert (started_entry["body"]["mode"], started_entry["body"]["digest"]) == ("shadow", digest)
    assert_problem(live.as_role("claims-agent").get("/v1/policies/shadow"), 403)


def test_a_failing_shadow_is_recorded_and_never_fails_the_live_decision(
    sqlite_database: Database, launch: Launch, tmp_path: Path
) -> None:
    # A candidate whose rule divides by a parameter: it passes its tests, and errors on "0".
    def divide(root: Path) -> None:
        rego = root / "rego" / "claims.rego"
        rego.write_text(
            rego.read_text()
            + '\ndeny contains {"code": "uneven_split", "message": "split too fine"} if {\n'
            + "\t100 / to_number(input.proposal.params.split) < 10\n}\n"
        )

    live = launch(sqlite_database)
    admin = live.as_role("policy-admin")
    agent = live.as_role("claims-agent")
    assert activate(admin, bundle_copy(tmp_path / "div", divide), mode="shadow").status_code == 200

    broken = claim("800", params={"amount": "800", "split": "0"})
    answer = propose(agent, broken, "execute")  # the live decision stands
    propose(agent, claim("900", params={"amount": "900", "split": "50"}), "execute")
    propose(agent, claim("900", params={"amount": "900", "split": "4"}), "execute")
    view = settled(live, admin)
    assert (view["disagreements"], view["errors"]) == (2, 1)
    by_action = {item["action_id"]: item for item in view["items"]}
    failed = by_action[answer["action_id"]]
    assert failed["shadow"]["verdict"] == "error"
    assert "divide by zero" in failed["shadow"]["error"]
    assert failed["active"]["verdict"] == "execute"
    denied = next(i for i in view["items"] if i["shadow"]["verdict"] == "reject")
    assert [r["code"] for r in denied["shadow"]["reasons"]] == ["uneven_split"]


def test_stopping_and_promoting_the_shadow(
    sqlite_database: Database, launch: Launch, tmp_path: Path
) -> None:
    live = launch(sqlite_database)
    admin = live.as_role("policy-admin")
    agent = live.as_role("claims-agent")
    candidate = bundle_copy(tmp_path / "raised", raised_review)
    digest = load_bundle(candidate).digest
    assert_problem(admin.delete("/v1/policies/shadow"), 409)  # none runs
    assert_problem(activate(admin, POLICIES, mode="shadow"), 409)  # the active one

    assert activate(admin, candidate, mode="shadow").status_code == 200
    propose(agent, claim("12000"), "hold")
    settled(live, admin)
    stopped = admin.delete("/v1/policies/shadow", params={"reason": "enough data"})
    assert stopped.status_code == 200, stopped.text
    assert stopped.json()["shadow"] is None
    assert stopped.json()["disagreements"] == 1  # the last shadow's stay listed
    propose(agent, claim("12000"), "hold")
    assert settled(live, admin)["disagreements"] == 1  # no longer compared

    # Shadow again, then activate the same bundle: the shadow ends in the same entry.
    assert activate(admin, candidate, mode="shadow").status_code == 200
    assert shadow_view(admin)["shadow"]["digest"] == digest
    promoted = activate(admin, candidate, reason="the shadow convinced us")
    assert promoted.status_code == 200
    assert shadow_view(admin)["shadow"] is None
    propose(agent, claim("12000"), "execute")
    modes = [(e["body"]["mode"], e["body"].get("shadow_stopped")) for e in policy_entries(live)]
    assert modes == [
        ("active", None),
        ("shadow", None),
        ("shadow-stopped", None),
        ("shadow", None),
        ("active", True),
    ]
    wait_for(lambda: live.runtime.policies.shadow.current is None, what="no shadow")


def test_a_shadow_with_the_same_verdict_for_other_reasons_names_the_codes(
    sqlite_database: Database, launch: Launch, tmp_path: Path
) -> None:
    live = launch(sqlite_database)
    admin = live.as_role("policy-admin")
    agent = live.as_role("claims-agent")
    candidate = bundle_copy(tmp_path / "renamed", renamed_limit)
    assert activate(admin, candidate, mode="shadow").status_code == 200

    refused = propose(agent, claim("60000"), "reject")
    propose(agent, claim("800"), "execute")
    view = settled(live, admin)
    assert (view["disagreements"], view["verdict_changes"], view["reasons_changed"]) == (1, 0, 1)
    (item,) = view["items"]
    assert item["action_id"] == refused["action_id"]
    assert item["verdict_changed"] is False
    assert (item["codes_added"], item["codes_removed"]) == (
        ["over_claim_limit"],
        ["over_hard_limit"],
    )
    assert shadow_view(admin, reasons_only="true")["items"] == [item]
    assert shadow_view(admin, verdict_changes_only="true")["items"] == []
    both = admin.get(
        "/v1/policies/shadow", params={"reasons_only": "true", "verdict_changes_only": "true"}
    )
    assert assert_problem(both, 422)["errors"][0]["field"] == "reasons_only"
