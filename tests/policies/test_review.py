"""What people read around a change of bundle, without raw HTTP calls: ``mandate policy diff``
(what differs between two bundle directories), ``policy show`` (the active bundle, who signed
it, its case types with their levels) and ``policy shadow start | status | stop``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from gateway.policy.bundle import load_bundle
from tests.approvals.conftest import Launch
from tests.approvals.harness import proposal, propose
from tests.conftest import Database
from tests.policies.support import (
    POLICIES,
    bundle_copy,
    clean_env,
    edit_data,
    keypair,
    lines_with,
    mandate,
    raised_review,
    renamed_limit,
    replace_in,
    sign,
)


def reviewed(data: dict[str, Any]) -> None:
    """Claims need three approvals, and a new case type appears (unused yet)."""
    claims = data["workflows"]["claims"]
    claims["case_types"]["claim.approve"]["quorum"] = 3
    claims["case_types"]["claim.fraud"] = {"initial_level": 1, "quorum": 2}


def test_diff_lists_the_rules_data_and_case_types_that_differ(tmp_path: Path) -> None:
    after = bundle_copy(
        tmp_path / "after",
        raised_review,
        renamed_limit,
        edit_data(reviewed),
        # Layout and comments are not a change of what a rule says.
        replace_in("rego/parking.rego", "deny contains {", "# reformatted\ndeny contains {\n"),
    )
    done = mandate("policy", "diff", POLICIES, after, cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    out = done.stdout
    assert lines_with(out, "+", "mandate.workflows.claims", "deny", "over_claim_limit")
    assert lines_with(out, "-", "mandate.workflows.claims", "deny", "over_hard_limit")
    assert not lines_with(out, "mandate.workflows.parking")
    assert '  ~ workflows.claims.review_over: "5000" → "20000"' in out.splitlines()
    assert '  ~ workflows.claims.case_types["claim.approve"].quorum: 2 → 3' in out.splitlines()
    assert "  ~ claims/claim.approve: quorum 2 → 3" in out.splitlines()
    assert "  + claims/claim.fraud" in out.splitlines()
    assert "  ~ rego/parking.rego" in out.splitlines()

    # A rule whose condition changes is "changed", named by its code.
    stricter = bundle_copy(
        tmp_path / "stricter", replace_in("rego/claims.rego", "amount > to_number(cfg.review_over)",
                                          "amount >= to_number(cfg.review_over)")
    )  # fmt: skip
    done = mandate("policy", "diff", POLICIES, stricter, "--json", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    (rule,) = report["rules"]
    source = (stricter / "rego" / "claims.rego").read_text().splitlines()
    line = next(n for n, text in enumerate(source, 1) if '"code": "high_value"' in text) - 1
    assert rule == {
        "change": "changed",
        "package": "mandate.workflows.claims",
        "name": "hold",
        "code": "high_value",
        "where": f"rego/claims.rego:{line}",
    }
    assert (report["data"], report["case_types"]) == ([], [])
    assert report["files"] == [{"change": "changed", "path": "rego/claims.rego"}]

    same = mandate("policy", "diff", POLICIES, bundle_copy(tmp_path / "copy"), cwd=tmp_path)
    assert same.returncode == 0, same.stderr
    assert "nothing differs" in same.stdout
    missing = mandate("policy", "diff", POLICIES, tmp_path / "none", cwd=tmp_path)
    assert missing.returncode == 2
    assert missing.stderr.startswith("error: ")


def test_show_names_the_active_bundle_who_signed_it_and_its_levels(
    sqlite_database: Database, launch: Launch, tmp_path: Path
) -> None:
    secret, public = keypair(tmp_path / "keys", "rsa")
    signed = bundle_copy(tmp_path / "signed")
    sign(signed, secret, "--key-id", "policy-team-2026")
    live = launch(sqlite_database, policies=signed, bundle_key=public)
    governor = live.as_role("governor")
    moved = governor.post(
        "/v1/autonomy/claims/claim.approve", json={"level": 2, "reason": "a bad week"}
    )
    assert moved.status_code == 200, moved.text

    env = clean_env(MANDATE_URL=live.url, MANDATE_TOKEN=live.token("auditor"))
    done = mandate("policy", "show", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert f"Active bundle {load_bundle(signed).digest}" in out
    assert "signed with key policy-team-2026 (RS256; key SHA-256" in out
    assert lines_with(out, "claims", "claim.approve", "2 supervised", "3", "2")
    assert lines_with(out, "parking", "refund.issue", "1")
    data = (signed / "data.json").read_bytes()
    assert lines_with(out, "data.json", str(len(data)), hashlib.sha256(data).hexdigest())

    done = mandate("policy", "show", "--json", cwd=tmp_path, env=env)
    shown = json.loads(done.stdout)
    assert shown["policy"]["signature"]["key_id"] == "policy-team-2026"
    assert all("content" not in f for f in shown["policy"]["files"])
    approve = next(c for c in shown["case_types"] if c["case_type"] == "claim.approve")
    assert (approve["level"], approve["initial_level"], approve["quorum"]) == (2, 3, 2)

    agent = clean_env(MANDATE_URL=live.url, MANDATE_TOKEN=live.token("claims-agent"))
    refused = mandate("policy", "show", cwd=tmp_path, env=agent)
    assert refused.returncode == 2
    assert "Traceback" not in refused.stderr


def test_shadow_start_status_and_stop_from_the_cli(
    sqlite_database: Database, launch: Launch, tmp_path: Path
) -> None:
    live = launch(sqlite_database)
    admin = clean_env(MANDATE_URL=live.url, MANDATE_TOKEN=live.token("policy-admin"))
    auditor = clean_env(MANDATE_URL=live.url, MANDATE_TOKEN=live.token("auditor"))
    candidate = bundle_copy(tmp_path / "both", raised_review, renamed_limit)

    done = mandate("policy", "shadow", "status", cwd=tmp_path, env=auditor)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "No shadow bundle runs."
    done = mandate(
        "policy", "shadow", "start", candidate, "--reason", "try both", cwd=tmp_path, env=admin
    )
    assert done.returncode == 0, done.stderr
    assert "is now the shadow bundle in the gateway" in done.stderr

    agent = live.as_role("claims-agent")
    held = propose(agent, proposal("claims", "claim.approve", amount="12000"), "hold")
    refused = propose(agent, proposal("claims", "claim.approve", amount="60000"), "reject")
    live.runtime.policies.shadow.drain()

    done = mandate("policy", "shadow", "status", cwd=tmp_path, env=auditor)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert f"Shadow bundle {load_bundle(candidate).digest[:12]}" in out
    assert "verdict changes: 1; same verdict for other reasons: 1" in out
    assert lines_with(out, "hold → execute", held["action_id"], "was [high_value], now [-]")
    assert "  claims/claim.approve reject: +over_claim_limit -over_hard_limit: 1" in out
    assert f"      {refused['action_id']}" in out.splitlines()

    done = mandate("policy", "shadow", "status", "--json", cwd=tmp_path, env=auditor)
    view = json.loads(done.stdout)
    assert view["reasons_changed"] == 1

    done = mandate("policy", "shadow", "stop", "--reason", "seen enough", cwd=tmp_path, env=admin)
    assert done.returncode == 0, done.stderr
    assert "its 2 disagreements stay listed" in done.stderr
    again = mandate("policy", "shadow", "stop", cwd=tmp_path, env=admin)
    assert again.returncode == 1  # none runs: the gateway's 409
    assert "no shadow bundle is running" in again.stderr
    done = mandate("policy", "shadow", "status", cwd=tmp_path, env=auditor)
    assert "The last shadow's disagreements:" in done.stdout
