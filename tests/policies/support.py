"""What the policy lifecycle tests share: bundles to change, the CLI in a subprocess, a policy
admin's calls, the ledger's ``policy`` entries, and keys to sign bundles with.

Nothing of ours is mocked: gateways are ``create_app`` under uvicorn on loopback (the approvals
harness), on real SQLite files and PostgreSQL schemas; the CLI runs as a person runs it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import orjson
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.policy.bundle import load_bundle, read_bundle_files
from ledger.entry import parse_entry
from ledger.models import ENTRIES
from tests.approvals.harness import Live

REPO = Path(__file__).resolve().parents[2]
POLICIES = REPO / "policies"
MANDATE = Path(sys.executable).with_name("mandate")
CASES = "tests/verdicts.yaml"


def bundle_copy(target: Path, *edits: Callable[[Path], None]) -> Path:
    """A copy of the default bundle with ``edits`` applied to its directory."""
    shutil.copytree(POLICIES, target)
    for edit in edits:
        edit(target)
    return target


def edit_data(change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    """An edit of data.json."""

    def edit(root: Path) -> None:
        data = orjson.loads((root / "data.json").read_bytes())
        change(data)
        (root / "data.json").write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))

    return edit


def replace_in(path: str, old: str, new: str) -> Callable[[Path], None]:
    """An edit that replaces ``old`` (which must be there) by ``new`` in one file."""

    def edit(root: Path) -> None:
        text = (root / path).read_text(encoding="utf-8")
        assert old in text, (path, old)
        (root / path).write_text(text.replace(old, new), encoding="utf-8")

    return edit


# A candidate that passes its own checks: claims are reviewed over 20,000 instead of 5,000, and
# the unit test and the decision case that said 12,000 is held now say so of 25,000.
def raised_review(root: Path) -> None:
    """Raise the claims review threshold to 20,000 (tests and cases follow)."""
    edit_data(lambda d: d["workflows"]["claims"].update(review_over="20000"))(root)
    replace_in(
        "rego/claims_test.rego",
        'codes(claims.hold) == {"high_value"} with input as claim("12000", 3)',
        'codes(claims.hold) == {"high_value"} with input as claim("25000", 3)',
    )(root)
    replace_in(
        CASES,
        "- name: a claim over the review threshold of 5000 is held at level 3\n"
        "    executor: claims-agent\n"
        '    proposal: {workflow: claims, action_type: claim.approve, params: {amount: "12000"}',
        "- name: a claim over the review threshold of 20000 is held at level 3\n"
        "    executor: claims-agent\n"
        '    proposal: {workflow: claims, action_type: claim.approve, params: {amount: "25000"}',
    )(root)


# A candidate with the same verdicts for other reasons: a claim over the hard limit is refused
# for a code of its own, over_claim_limit, instead of over_hard_limit (the unit test and the
# decision case that name the code follow).
def renamed_limit(root: Path) -> None:
    """Refuse claims over the hard limit as over_claim_limit (tests and cases follow)."""
    replace_in("rego/claims.rego", '"code": "over_hard_limit"', '"code": "over_claim_limit"')(root)
    replace_in(
        "rego/claims_test.rego",
        'codes(claims.deny) == {"over_hard_limit"}',
        'codes(claims.deny) == {"over_claim_limit"}',
    )(root)
    replace_in(
        CASES,
        'params: {amount: "60000"}, confidence: 0.97}\n'
        "    expect: {verdict: reject, reasons: [over_hard_limit]}",
        'params: {amount: "60000"}, confidence: 0.97}\n'
        "    expect: {verdict: reject, reasons: [over_claim_limit]}",
    )(root)


def texts(root: Path) -> dict[str, str]:
    """A bundle directory as ``POST /v1/policies`` takes it."""
    return {path: data.decode("utf-8") for path, data in read_bundle_files(root).items()}


def activate(
    client: httpx.Client, root: Path, *, mode: str = "active", reason: str = "test"
) -> httpx.Response:
    """POST a bundle directory to /v1/policies."""
    return client.post("/v1/policies", json={"files": texts(root), "reason": reason, "mode": mode})


def policy_entries(live: Live) -> list[dict[str, Any]]:
    """The ``policy`` entries of a gateway's ledger, in order, as dicts."""
    with live.runtime.engine.connect() as conn:
        rows = conn.execute(
            sa.select(ENTRIES.c.data).where(ENTRIES.c.kind == "policy").order_by(ENTRIES.c.seq)
        ).all()
    return [parse_entry(bytes(row.data)).to_dict() for row in rows]


def decision_count(live: Live) -> int:
    """How many decision entries the ledger holds."""
    with live.runtime.engine.connect() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.count()).where(ENTRIES.c.kind == "decision")
            ).scalar_one()
        )


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without MANDATE_* settings, with this checkout first on the path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MANDATE_")}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


def mandate(
    *args: str | Path, cwd: Path, env: dict[str, str] | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """Run the ``mandate`` command as a person would."""
    return subprocess.run(
        [str(MANDATE), *(str(a) for a in args)],
        cwd=cwd,
        env=env or clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def keypair(directory: Path, kind: str) -> tuple[Path, Path]:
    """A fresh private key (PEM) and its public key, as files in ``directory``."""
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if kind == "rsa"
        else ec.generate_private_key(ec.SECP256R1())
    )
    directory.mkdir(parents=True, exist_ok=True)
    secret, public = directory / f"{kind}.pem", directory / f"{kind}.pub"
    secret.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return secret, public


def sign(directory: Path, key: Path, *extra: str) -> None:
    """``mandate policy sign`` as a person runs it; it must succeed."""
    done = mandate("policy", "sign", directory, "--key", key, *extra, cwd=directory.parent)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == load_bundle(directory).digest


def lines_with(text: str, *words: str) -> Sequence[str]:
    """The lines of ``text`` that hold every one of ``words``."""
    return [line for line in text.splitlines() if all(w in line for w in words)]
