"""The benchmarks still run: ``python -m bench --quick`` exits 0 and prints every figure.

Tiny sizes in a scratch directory; the figures themselves mean nothing here and are not checked,
only that each bench produced its lines (so a change in ``ledger`` cannot silently break them).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

EXPECTED = [
    "ledger_append.raw_100",
    "ledger_append.raw_32",
    "ledger_append.raw_1",
    "ledger_append.async_32",
    "ledger_append.threads_32",
    "ledger_append.single",
    "ledger_verify.raw_sha256",
    "ledger_verify.verify_export",
    "ledger_verify.build",
    "ledger_proofs.inclusion_proof",
    "ledger_proofs.consistency_proof",
    "ledger_proofs.root",
    "ledger_proofs.leaf_hash_read",
    "ledger_proofs.verify_failures",
]


def _run(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench", *args, "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.timeout(150)
def test_quick_bench_prints_every_figure(tmp_path: Path) -> None:
    done = _run("--quick", tmp_path=tmp_path)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    lines = done.stdout.splitlines()
    for name in EXPECTED:
        pattern = re.compile(rf"^FIGURE {re.escape(name)}: [\d,.]+ \S+ \(median of \d+: ")
        assert any(pattern.match(line) for line in lines), f"no figure line for {name}"
    assert "ledger_proofs.verify_failures: 0 failures" in done.stdout
    assert "=== summary ===" in done.stdout


def test_unknown_group_is_refused(tmp_path: Path) -> None:
    done = _run("no_such_bench", "--quick", tmp_path=tmp_path)
    assert done.returncode == 2
    assert "unknown group or bench" in done.stderr
