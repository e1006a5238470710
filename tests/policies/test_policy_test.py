"""``mandate policy test``: Rego unit tests, decision cases through the gateway's own steps,
coverage of the rules that fired; exit 0, 1 on any failure, 2 on a bundle it cannot use."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gateway.lifecycle.checks import check_bundle
from gateway.policy.bundle import load_bundle
from tests.policies.support import (
    CASES,
    POLICIES,
    REPO,
    bundle_copy,
    edit_data,
    lines_with,
    mandate,
    replace_in,
)


def test_the_default_bundle_passes_with_every_rule_fired(tmp_path: Path) -> None:
    done = mandate("policy", "test", cwd=REPO)  # the default DIR is ./policies
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "Rego unit tests: 20 passed, 0 failed" in out
    assert lines_with(out, "Decision cases:", "passed, 0 failed")
    assert lines_with(out, "PASS", "tests/verdicts.yaml #3", "→ reject [not_permitted]")
    assert lines_with(out, "PASS", "rego/claims_test.rego", "test_litigation_is_held")
    # Coverage names each rule by its reason code, with the cases that fired it.
    assert lines_with(out, "rego/claims.rego:33", "hold high_value", "cases 1", "tests yes")
    assert "NEVER FIRED" not in out
    assert out.rstrip().splitlines()[-1].startswith("PASS:")


def test_the_cases_cover_the_readme_verdict_table() -> None:
    check = check_bundle(load_bundle(POLICIES))
    assert check.passed, check.failures()
    decided: dict[tuple[object, ...], tuple[str, list[str]]] = {}
    for c in check.cases:
        if c.case.level is None:  # at the case type's initial level, as the table is
            key = (
                c.case.executor["role"],
                c.case.proposal["action_type"],
                c.case.proposal.get("params", {}).get("amount"),
                c.case.proposal.get("confidence"),
            )
            decided.setdefault(key, (c.got.verdict, c.got.codes))
    table = {  # policies/README.md, "The default bundle's verdicts"
        ("booking-agent", "booking.create", None, 0.95): ("execute", []),
        ("booking-agent", "booking.create", None, 0.50): ("hold", ["low_confidence"]),
        ("booking-agent", "refund.issue", "20", 0.99): ("reject", ["not_permitted"]),
        ("payments-agent", "refund.issue", "20", 0.99): ("hold", ["advisory_level"]),
        ("payments-agent", "refund.issue", "5000", 0.99): ("reject", ["over_hard_limit"]),
        ("claims-agent", "claim.approve", "800", 0.97): ("execute", []),
        ("claims-agent", "claim.approve", "12000", 0.97): ("hold", ["high_value"]),
        ("claims-agent", "claim.approve", "60000", 0.97): ("reject", ["over_hard_limit"]),
        ("files-agent", "list_directory", None, None): ("execute", []),
        ("files-agent", "write_file", None, None): ("hold", ["advisory_level"]),
    }
    for row, expected in table.items():
        assert decided.get(row) == expected, row


def test_a_case_that_fails_is_shown_with_what_was_expected_and_exits_1(tmp_path: Path) -> None:
    root = bundle_copy(
        tmp_path / "b",
        replace_in("data.json", '"review_over": "5000"', '"review_over": "15000"'),
    )
    done = mandate("policy", "test", root, cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    (failed,) = lines_with(done.stdout, "FAIL", CASES)
    assert "a claim over the review threshold of 5000 is held at level 3" in failed
    assert "expected hold, got execute (no reasons)" in done.stdout
    assert "expected reasons [high_value], got []" in done.stdout
    assert lines_with(done.stdout, "executor role claims-agent, level 3, proposal", "12000")
    # The Rego unit test that said the same fails too, and the result line counts both.
    assert lines_with(done.stdout, "FAIL", "test_large_claim_is_held_at_level_3")
    assert done.stdout.rstrip().splitlines()[-1].startswith("FAIL:")
    assert "2 failures" in done.stdout


def test_a_rule_no_case_reaches_is_shown_and_does_not_fail(tmp_path: Path) -> None:
    rule = (
        '\nhold contains {"code": "weekend", "message": "weekend booking"} if {\n'
        "\tinput.proposal.context.weekend == true\n}\n"
    )
    root = bundle_copy(tmp_path / "b")
    (root / "rego" / "parking.rego").write_text((root / "rego" / "parking.rego").read_text() + rule)
    done = mandate("policy", "test", root, cwd=tmp_path)
    assert done.returncode == 0, done.stdout
    assert lines_with(done.stdout, "hold weekend", "cases 0", "tests no", "NEVER FIRED")


def test_json_output_has_every_test_case_and_rule(tmp_path: Path) -> None:
    done = mandate("policy", "test", POLICIES, "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["passed"] is True
    assert report["digest"] == load_bundle(POLICIES).digest
    assert report["summary"]["rego_tests"] == {"passed": 20, "failed": 0}
    assert report["summary"]["cases"]["failed"] == 0
    assert {c["got"]["verdict"] for c in report["cases"]} == {
        "execute",
        "hold",
        "reject",
        "refused",
    }
    assert all(r["cases"] > 0 or r["tests"] for r in report["coverage"])


def test_unusable_input_exits_2_naming_the_file_and_the_key(tmp_path: Path) -> None:
    typo = bundle_copy(
        tmp_path / "typo",
        replace_in(CASES, "expect: {verdict: execute", "expected: {verdict: execute"),
    )
    broken = bundle_copy(tmp_path / "broken")
    (broken / "tests" / "more.yaml").write_text("cases: [ {name: x\n")
    syntax = bundle_copy(
        tmp_path / "syntax",
        replace_in("rego/claims.rego", "amount > to_number", "amount >> to_number"),
    )
    for root, words in (
        (typo, ["tests/verdicts.yaml #1", "unknown keys ['expected']"]),
        (broken, ["tests/more.yaml", "not YAML"]),
        (syntax, ["rego/claims.rego", "the bundle's Rego does not load"]),
        (tmp_path / "nowhere", ["not a directory"]),
    ):
        done = mandate("policy", "test", root, cwd=tmp_path)
        assert done.returncode == 2, (root, done.stdout, done.stderr)
        for word in words:
            assert word in done.stdout + done.stderr, (root, word, done.stdout, done.stderr)


def test_a_failing_rego_unit_test_exits_1(tmp_path: Path) -> None:
    root = bundle_copy(
        tmp_path / "b",
        replace_in(
            "rego/parking_test.rego",
            'count(parking.deny) == 0 with input as refund("1000.00")',
            'count(parking.deny) == 0 with input as refund("1000.01")',
        ),
    )
    done = mandate("policy", "test", root, cwd=tmp_path)
    assert done.returncode == 1
    assert lines_with(done.stdout, "FAIL", "rego/parking_test.rego", "test_refund_at_hard_limit")
    # One failure is counted as one, not as "1 failures".
    assert done.stdout.rstrip().splitlines()[-1].endswith(", 1 failure")


def test_action_types_casbin_and_case_types_that_disagree_fail_with_each_named(
    tmp_path: Path,
) -> None:
    def disagree(data: dict[str, Any]) -> None:
        parking = data["workflows"]["parking"]
        parking["action_types"]["valet.park"] = {"case_types": ["booking.create"]}  # no role
        parking["case_types"]["booking.orphan"] = {"initial_level": 2}  # no action type
        del parking["action_types"]["shuttle.dispatch"]  # dispatch-agent's line allows nothing
        del parking["case_types"]["shuttle.dispatch"]

    root = bundle_copy(tmp_path / "b", edit_data(disagree))
    done = mandate("policy", "test", root, cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    out = done.stdout
    assert lines_with(out, "FAIL", "data.json", "valet.park, which no role may propose")
    assert lines_with(out, "FAIL", "data.json", "booking.orphan, which no action type may be")
    assert lines_with(out, "FAIL", "casbin/policy.csv", "p, dispatch-agent, parking, shuttle.*")
    assert out.rstrip().splitlines()[-1].startswith("FAIL:")


def test_the_default_bundle_maps_every_action_type_and_case_type() -> None:
    check = check_bundle(load_bundle(POLICIES))
    assert check.mapping == []
