"""Run the benchmarks: ``python -m bench [GROUP-OR-BENCH ...] [--quick] [--repeat N]``.

With no names every bench runs but the long ones (``ON_REQUEST = True``: the soak), which run
when named or with ``--quick``; a group name (``ledger``) runs the benches of that group, a
bench name (``ledger_verify``) runs that one. ``--quick`` uses tiny sizes and a scratch
directory, for the smoke test that keeps the benches from rotting; its figures mean nothing.
Figures are printed (lines starting with ``FIGURE``), never asserted.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from bench._common import Context, Figure, print_summary

# Bench modules, in the order they run. Each has NAME, GROUP, DESCRIPTION and run(ctx), and may
# set ON_REQUEST = True to be left out of a run without names unless it is --quick.
BENCHES = (
    "bench.ledger_append",
    "bench.ledger_seal",
    "bench.ledger_verify",
    "bench.ledger_proofs",
    "bench.witness",
    "bench.gateway_http",
    "bench.gateway_scale",
    "bench.gateway_decide",
    "bench.permit",
    "bench.body_parse",
    "bench.dispatch_latency",
    "bench.dispatch_outbox",
    "bench.autonomy",
    "bench.history",
    "bench.inbox_page",
    "bench.replay",
    "bench.mcp_proxy",
    "bench.soak",
)
DEFAULT_OUT = Path(__file__).resolve().parent / "out"


def _modules() -> list[ModuleType]:
    return [importlib.import_module(name) for name in BENCHES]


def _select(
    modules: Sequence[ModuleType], names: Sequence[str], quick: bool = False
) -> list[ModuleType]:
    if not names:
        return [m for m in modules if quick or not getattr(m, "ON_REQUEST", False)]
    return [m for m in modules if m.NAME in names or m.GROUP in names]


def _parser(modules: Sequence[ModuleType]) -> argparse.ArgumentParser:
    groups = sorted({m.GROUP for m in modules})
    listing = "\n".join(
        f"  {m.NAME:<16} ({m.GROUP}) {m.DESCRIPTION}"
        + (" [only when named]" if getattr(m, "ON_REQUEST", False) else "")
        for m in modules
    )
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmarks: figures against baselines measured in the same run.",
        epilog=f"groups: {', '.join(groups)}\nbenches:\n{listing}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help="groups or benches to run (default: all)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes and 2 runs each, in a scratch directory (the smoke test)",
    )
    parser.add_argument(
        "--repeat", type=int, default=None, help="runs per measurement (default 5; 2 if --quick)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"where generated data is kept and reused (default {DEFAULT_OUT}; "
        "with --quick a temporary directory)",
    )
    return parser


def _load() -> str:
    """The 1, 5 and 15 minute load averages: how much the neighbours were running."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, run the chosen benches, print every figure again at the end."""
    modules = _modules()
    parser = _parser(modules)
    args = parser.parse_args(argv)
    known = {m.NAME for m in modules} | {m.GROUP for m in modules}
    unknown = [n for n in args.names if n not in known]
    if unknown:
        parser.error(f"unknown group or bench: {', '.join(unknown)} (known: {sorted(known)})")
    chosen = _select(modules, args.names, quick=args.quick)
    repeat = args.repeat if args.repeat is not None else (2 if args.quick else 5)
    if repeat < 1:
        parser.error("--repeat must be at least 1")

    with tempfile.TemporaryDirectory(prefix="mandate-bench-") as scratch:
        out = (args.out or (Path(scratch) if args.quick else DEFAULT_OUT)).resolve()
        out.mkdir(parents=True, exist_ok=True)
        print(
            f"bench: {', '.join(m.NAME for m in chosen)}; {'quick' if args.quick else 'full'} "
            f"sizes, {repeat} runs per measurement, data in {out}; Python "
            f"{platform.python_version()}, {os.cpu_count()} CPUs, load average {_load()}",
            flush=True,
        )
        figures: list[Figure] = []
        failed: list[str] = []
        started = time.perf_counter()
        for module in chosen:
            ctx = Context(out=out, quick=args.quick, repeat=repeat, bench=module.NAME)
            print(f"\n=== {module.NAME}: {module.DESCRIPTION} ===", flush=True)
            begun = time.perf_counter()
            try:
                module.run(ctx)
            except Exception:
                traceback.print_exc()
                failed.append(module.NAME)
            figures.extend(ctx.figures)
            ctx.log(f"finished in {time.perf_counter() - begun:.1f} s; load average {_load()}")
        print_summary(figures)
        print(f"total {time.perf_counter() - started:.1f} s", flush=True)
    if failed:
        print(f"bench: FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
