"""Conformance: every shipped and test bundle decides alike on regorus and on OPA's own evaluator
(OPA v1.20.2, in-process through opa-golib-python-bindings), over its Rego tests, its decision
cases and inputs generated around every threshold of its data; where they differ, the report
names the rule and the input."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.lifecycle.conformance import Conformance, check_conformance, describe_conformance
from gateway.policy.bundle import load_bundle
from tests.gateway.test_classify import classifying_bundle
from tests.policies.support import (
    POLICIES,
    REPO,
    bundle_copy,
    edit_data,
    lines_with,
    mandate,
    raised_review,
    replace_in,
)

pytest.importorskip("opa_bindings", reason="OPA's evaluator (mandate[opa]) is not installed")


# regorus prints a float's digits (0.00001), OPA the number as the input wrote it (1e-05).
_prints_the_confidence = replace_in(
    "rego/parking.rego",
    '"message": sprintf("confidence is below the floor of %v", [cfg.confidence_floor]),',
    '"message": sprintf("confidence %v is below the floor of %v", '
    "[input.proposal.confidence, cfg.confidence_floor]),",
)


def _check(root: Path) -> Conformance:
    return check_conformance(load_bundle(root))


def _shipped(tmp_path: Path) -> Path:
    return POLICIES


def _raised_review(tmp_path: Path) -> Path:
    return bundle_copy(tmp_path / "raised", raised_review)


@pytest.mark.parametrize(
    "make", [_shipped, _raised_review, classifying_bundle], ids=["shipped", "raised", "classifying"]
)
def test_shipped_and_test_bundles_decide_alike_on_both_engines(
    tmp_path: Path, make: Callable[[Path], Path]
) -> None:
    report = _check(make(tmp_path))
    assert report.passed, "\n".join(describe_conformance(report))
    assert report.opa.startswith("OPA v1.")
    assert report.tests >= 13
    assert report.cases >= 20
    assert report.generated > 1000  # around every threshold, at every level


def test_a_number_printed_with_v_is_a_disagreement_naming_the_rule_and_the_input(
    tmp_path: Path,
) -> None:
    root = bundle_copy(tmp_path / "printed", _prints_the_confidence)
    report = _check(root)
    assert not report.passed
    disagreement = next(
        d for d in report.disagreements if d.input["proposal"]["confidence"] == 1e-05
    )
    assert disagreement.input["proposal"]["workflow"] == "parking"
    (difference,) = disagreement.differences
    assert difference.startswith("hold low_confidence (rego/parking.rego:")
    assert "'confidence 0.00001 is below the floor of 0.80' (regorus)" in difference
    assert "'confidence 1e-05 is below the floor of 0.80' (OPA)" in difference
    lines = describe_conformance(report)
    assert any(line.strip().startswith("DIFFER") for line in lines)
    assert any('"confidence": 1e-05' in line for line in lines)


def test_amounts_finer_than_a_float_tells_apart_are_a_disagreement(tmp_path: Path) -> None:
    # 18 decimals: regorus compares 64-bit floats (50000.000000000000000001 is 50000), OPA
    # compares the decimals exactly and refuses it over the hard limit.
    root = bundle_copy(
        tmp_path / "fine",
        edit_data(lambda d: d["workflows"]["claims"].update(amount_scale=18)),
    )
    report = _check(root)
    over = [
        d
        for d in report.disagreements
        if d.input["proposal"]["params"].get("amount") == "50000.000000000000000001"
    ]
    assert over, "\n".join(describe_conformance(report))
    assert any(
        "deny over_hard_limit (rego/claims.rego:" in diff and "only OPA gives it" in diff
        for d in over
        for diff in d.differences
    )
    assert any(diff.startswith("verdict: regorus") for d in over for diff in d.differences)


def test_policy_test_on_opa_passes_the_shipped_bundle(tmp_path: Path) -> None:
    done = mandate("policy", "test", "--engine", "opa", cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert lines_with(out, "Rego unit tests: 20 passed, 0 failed", "(OPA v1.20.2")
    assert lines_with(out, "Decision cases:", "passed, 0 failed", "(OPA v1.20.2")
    assert lines_with(out, "Engines: regorus", "against OPA v1.20.2", "generated inputs")
    assert "The engines agree on every one." in out
    assert out.rstrip().splitlines()[-1].startswith("PASS:")
    assert out.rstrip().endswith("0 engine disagreements")


def test_policy_test_on_opa_fails_a_disagreement_naming_the_rule_and_the_input(
    tmp_path: Path,
) -> None:
    root = bundle_copy(tmp_path / "printed", _prints_the_confidence)
    done = mandate("policy", "test", "--engine", "opa", root, cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    out = done.stdout
    assert lines_with(out, "DIFFER", "generated")
    assert lines_with(out, "hold low_confidence (rego/parking.rego:", "(regorus) vs", "(OPA)")
    assert lines_with(out, "input", '"confidence": 1e-05', '"workflow": "parking"')
    assert out.rstrip().splitlines()[-1].startswith("FAIL:")
    as_json = mandate("policy", "test", "--engine", "opa", "--json", root, cwd=tmp_path)
    report = json.loads(as_json.stdout)
    assert report["passed"] is False
    assert report["conformance"]["disagreements"]
    # regorus alone sees nothing wrong: the difference exists only between engines.
    assert mandate("policy", "test", root, cwd=tmp_path).returncode == 0
