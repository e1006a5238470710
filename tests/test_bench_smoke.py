"""The benchmarks still run: ``python -m bench --quick`` exits 0 and prints every figure.

Tiny sizes in a scratch directory; the figures themselves mean nothing here and are not checked,
only that each bench produced its lines (so a change in ``ledger``, ``gateway`` or ``adapters``
cannot silently break them). The gateway and dispatch benches start real gateways (``mandate
serve``) and load generators in subprocesses, and the MCP bench the npm filesystem server and
``mandate mcp proxy``, so the quick run takes a few minutes.
"""

from __future__ import annotations

import os
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
    "ledger_seal.prepare_plain",
    "ledger_seal.prepare_sealed",
    "ledger_seal.plain_async_32",
    "ledger_seal.sealed_async_32",
    "ledger_seal.erase",
    "ledger_seal.append_one",
    "ledger_verify.raw_sha256",
    "ledger_verify.verify_export",
    "ledger_verify.build",
    "ledger_proofs.inclusion_proof",
    "ledger_proofs.consistency_proof",
    "ledger_proofs.root",
    "ledger_proofs.leaf_hash_read",
    "ledger_proofs.verify_failures",
    "witness.round",
    "gateway_http.bare_rate",
    "gateway_http.gateway_rate",
    "gateway_http.bare_p50",
    "gateway_http.gateway_p50",
    "gateway_http.bare_p99",
    "gateway_http.gateway_p99",
    "gateway_decide.ledger_c1_rate",
    "gateway_decide.decide_c1_rate",
    "gateway_decide.decide_c1_p50",
    "gateway_decide.decide_c1_p99",
    "gateway_decide.ledger_c16_rate",
    "gateway_decide.decide_c16_rate",
    "gateway_decide.decide_c16_p50",
    "gateway_decide.decide_c16_p99",
    "gateway_decide.judge",
    "gateway_decide.sealed_c1_rate",
    "gateway_decide.sealed_c16_rate",
    "gateway_decide.seal_c1",
    "gateway_decide.erase",
    "gateway_decide.erase_per_decision",
    "permit.raw_50",
    "permit.raw_5000",
    "permit.cold_50",
    "permit.cold_5000",
    "permit.cached_50",
    "permit.cached_5000",
    "permit.build_50",
    "permit.build_5000",
    "permit.worst_raw_50",
    "permit.worst_raw_5000",
    "permit.worst_cold_50",
    "permit.worst_cold_5000",
    "permit.worst_cached_50",
    "permit.worst_cached_5000",
    "permit.worst_build_50",
    "permit.worst_build_5000",
    "body_parse.lenient_typical",
    "body_parse.strict_typical",
    "body_parse.lenient_large",
    "body_parse.strict_large",
    "body_parse.refused",
    "dispatch_latency.direct_p50",
    "dispatch_latency.direct_p99",
    "dispatch_latency.delivery_p50",
    "dispatch_latency.delivery_p99",
    "dispatch_outbox.direct_rate",
    "dispatch_outbox.outbox_rate",
    "dispatch_outbox.outbox_calls",
    "autonomy.without_figures",
    "autonomy.with_figures",
    "autonomy.cpu_without",
    "autonomy.cpu_with",
    "autonomy.cost",
    "autonomy.stats_read",
    "autonomy.row_write",
    "autonomy.window_read",
    "autonomy.review",
    "replay.live_decide",
    "inbox_page.small",
    "inbox_page.first",
    "inbox_page.filtered",
    "inbox_page.search",
    "inbox_page.expiry",
    "inbox_page.deep",
    "replay.replay",
    "gateway_scale.sqlite_n1_rate",
    "gateway_scale.sqlite_n2_rate",
    "gateway_scale.sqlite_n2_p99",
    "mcp_proxy.direct_p50",
    "mcp_proxy.direct_p99",
    "mcp_proxy.proxied_p50",
    "mcp_proxy.proxied_p99",
    "mcp_proxy.held_to_call",
    "mcp_proxy.held_to_answer",
]
# The PostgreSQL halves run where the suite has a database; the soak then runs there too.
if os.environ.get("MANDATE_TEST_DATABASE_URL"):
    EXPECTED += [
        "gateway_scale.postgresql_n1_rate",
        "gateway_scale.postgresql_n2_rate",
        "soak.postgresql_errors",
        "soak.postgresql_ledger",
    ]
else:
    EXPECTED += ["soak.sqlite_errors", "soak.sqlite_ledger"]


def _run(
    *args: str, tmp_path: Path, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench", *args, "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
    )


def _figure_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("FIGURE ")]


def _has_figure(lines: list[str], name: str) -> bool:
    # A paired difference (autonomy.cost) may come out below zero in a tiny, noisy run.
    pattern = re.compile(rf"^FIGURE {re.escape(name)}: -?[\d,.]+ \S+ \(median of \d+: ")
    return any(pattern.match(line) for line in lines)


@pytest.mark.timeout(390)
def test_quick_bench_prints_every_figure(tmp_path: Path) -> None:
    done = _run("--quick", tmp_path=tmp_path)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    lines = _figure_lines(done.stdout)
    for name in EXPECTED:
        assert _has_figure(lines, name), f"no figure line for {name}"
    assert "ledger_proofs.verify_failures: 0 failures" in done.stdout
    assert "=== summary ===" in done.stdout
    assert "load generator: " in done.stdout  # gateway_http says which one it used


@pytest.mark.timeout(150)
def test_the_builtin_load_generator_stands_in_for_wrk(tmp_path: Path) -> None:
    # Where wrk is not installed the HTTP bench falls back to its own load generator; force
    # that here so that the fallback keeps working where wrk is present.
    env = dict(os.environ, BENCH_LOADGEN="builtin")
    done = _run("gateway_http", "--quick", "--repeat", "1", tmp_path=tmp_path, env=env)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "load generator: built-in" in done.stdout
    lines = _figure_lines(done.stdout)
    for name in ("gateway_http.bare_rate", "gateway_http.gateway_rate"):
        assert _has_figure(lines, name), f"no figure line for {name}"


def test_unknown_group_is_refused(tmp_path: Path) -> None:
    done = _run("no_such_bench", "--quick", tmp_path=tmp_path)
    assert done.returncode == 2
    assert "unknown group or bench" in done.stderr
