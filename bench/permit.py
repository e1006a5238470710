"""Permit cost with 50 and 5,000 Casbin policy lines: the gateway's ``Permitter`` against a
plain pycasbin ``Enforcer`` over the same lines.

The policies: the repository's ``policies/casbin/policy.csv`` (9 lines: parking and claims)
plus generated lines up to 50 or 5,000, in two shapes:

- ``spread`` (as a real deployment grows): the extra lines belong to other workflows, 50 per
  workflow (40 executor ``propose`` lines over 8 roles, 8 ``approve`` lines, 2 role
  inheritances), so 5,000 lines are about 100 workflows. The request's workflow keeps its lines.
- ``worst`` (the worst case): every extra line is a ``propose`` line in the request's own
  workflow (parking; 50 roles, a role inheritance every 50 lines).

In both the default lines come last. pycasbin stops at the first line that allows a request
(``some(where (p.eft == allow))``), so the raw figures are those of a request whose line is
last, which is also what every denied request costs.

The request: may ``booking-agent`` ``propose`` ``booking.<x>`` in parking (allowed by
``booking.*``)? Per policy, in microseconds per permit:

- ``raw``: ``casbin.Enforcer(model.conf, policy.csv)`` over all the lines, ``enforce_ex`` per
  request (pycasbin runs the matcher over every line: the issue's "about 60x").
- ``cold``: ``Permitter.permit``, first call for each key (a new action type each call), once the
  request's per-(workflow, act) enforcer is built: the cost of a cache miss.
- ``cached``: ``Permitter.permit`` repeated for one key: what almost every decision pays.
- ``build``: the first call on a fresh ``Permitter`` (builds the per-domain enforcer), in ms,
  paid once per key domain after every policy change.

The issue's target: 5,000 lines cost less than 1.5x what 50 cost. The machine is shared, so
each 50-line figure is measured in turns with its 5,000-line peer, call by call (``cached``:
1,000-call batch by batch), and within a run each figure is the median of those calls or
batches; the figure is the median of the runs.
"""

from __future__ import annotations

import itertools
import shutil
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import casbin

from bench._common import Context, Figure
from bench._gateway import POLICIES
from gateway.policy.permit import Permitter

NAME = "permit"
GROUP = "gateway"
DESCRIPTION = "permit cost with 50 and 5,000 Casbin lines: Permitter (cold, cached) vs pycasbin"

SIZES = (50, 5000)
TARGET = 1.5
ROLE, WORKFLOW, ACT = "booking-agent", "parking", "propose"


def _default_lines() -> list[str]:
    text = (POLICIES / "casbin" / "policy.csv").read_text()
    return [line.strip() for line in text.splitlines() if line.strip() and line[0] in "pg"]


def spread_policy(total: int) -> list[str]:
    """50-line blocks for other workflows, then the default lines: ``total`` lines in all."""
    defaults = _default_lines()
    lines: list[str] = []
    workflow = 0
    while len(lines) < total - len(defaults):
        workflow += 1
        wf = f"wf-{workflow:03d}"
        block = [f"p, agent-{k % 8}, {wf}, op{k}.*, propose" for k in range(40)]
        block += [f"p, approver, {wf}, op{k}.*, approve" for k in range(8)]
        block += [f"g, senior-agent-{k}, agent-{k}, {wf}" for k in range(2)]
        lines += block[: total - len(defaults) - len(lines)]
    return lines + defaults


def worst_policy(total: int) -> list[str]:
    """``total`` lines, all but the (last) defaults ``propose`` lines in the request's
    workflow."""
    defaults = _default_lines()
    extra = []
    for k in range(total - len(defaults)):
        if k % 50 == 49:
            extra.append(f"g, senior-agent-{k % 50}, agent-{k % 50}, {WORKFLOW}")
        else:
            extra.append(f"p, agent-{k % 50}, {WORKFLOW}, op{k}.*, {ACT}")
    return extra + defaults


@dataclass
class _Case:
    """One policy: its lines and what each measurement gave (us per permit, ms to build)."""

    shape: str
    size: int
    lines: list[str]
    policy_file: Path
    enforcer: casbin.Enforcer  # raw pycasbin over all the lines
    raw: list[float] = field(default_factory=list)
    cold: list[float] = field(default_factory=list)
    cached: list[float] = field(default_factory=list)
    build: list[float] = field(default_factory=list)


def run(ctx: Context) -> list[Figure]:
    """Generate the policies, measure each ``ctx.repeat`` times, interleaved."""
    work = ctx.out / NAME
    work.mkdir(parents=True, exist_ok=True)
    model_file = POLICIES / "casbin" / "model.conf"
    model_text = model_file.read_text()
    cases: list[_Case] = []
    with ctx.step("setup: policies, and raw pycasbin enforcers over each (model.conf, csv)"):
        for shape, make in (("spread", spread_policy), ("worst", worst_policy)):
            for size in SIZES:
                lines = make(size)
                assert len(lines) == size, (shape, size, len(lines))
                path = work / f"policy-{shape}-{size}.csv"
                path.write_text("\n".join(lines) + "\n")
                enforcer = casbin.Enforcer(str(model_file), str(path))
                allowed, _ = enforcer.enforce_ex(ROLE, WORKFLOW, "booking.setup", ACT)
                assert allowed, "the generated policy must allow the request"
                cases.append(_Case(shape, size, lines, path, enforcer))
    workflows = {c.size: len({line.split(", ")[2] for line in c.lines}) for c in cases[:2]}
    ctx.log(
        f"policies: spread over {workflows[50]} and {workflows[5000]} workflows; worst: "
        f"{SIZES[1] - 9:,} lines in {WORKFLOW}; request ({ROLE}, {WORKFLOW}, booking.<x>, {ACT})"
    )

    slow, fast = (3, 10) if ctx.quick else (12, 200)  # calls per run: ~50 ms or ~0.2 ms each
    batches = 2 if ctx.quick else 100  # of 1,000 cached calls
    serial = itertools.count()
    for rep in range(ctx.repeat):
        for small, big in (cases[0:2], cases[2:4]):
            # Each 50-line figure is measured in turns with its 5,000-line peer (call by call,
            # batch by batch), so that a neighbour's burst slows both alike.
            pair = (small, big)
            raws = _turns([c.enforcer.enforce_ex for c in pair], slow, serial)
            permitters = []
            for case in pair:
                permitter = Permitter(model_text, "\n".join(case.lines))
                start = time.perf_counter()
                permitter.permit(ROLE, WORKFLOW, "booking.build", ACT)
                case.build.append((time.perf_counter() - start) * 1000)
                permitters.append(permitter)
            colds = _turns(
                [p.permit for p in permitters], slow if small.shape == "worst" else fast, serial
            )
            cached = _cached_turns(permitters, batches)
            for case, raw, cold, hit in zip(pair, raws, colds, cached, strict=True):
                case.raw.append(raw * 1e6)
                case.cold.append(cold * 1e6)
                case.cached.append(hit * 1e6)
        ctx.log(
            f"  run {rep + 1}/{ctx.repeat}: "
            + ", ".join(
                f"{c.shape}_{c.size} raw {c.raw[-1]:,.0f} cold {c.cold[-1]:,.0f} "
                f"cached {c.cached[-1]:.2f} us build {c.build[-1]:.1f} ms"
                for c in cases
            )
        )
    shutil.rmtree(work, ignore_errors=True)
    return _figures(ctx, cases)


def _turns(
    permits: list[Callable[[str, str, str, str], object]], rounds: int, serial: Iterator[int]
) -> list[float]:
    """Median seconds per call of each of ``permits``, called in turns, ``rounds`` calls each,
    every call with an action type not asked before (so never a cache hit)."""
    times: list[list[float]] = [[] for _ in permits]
    for _ in range(rounds):
        for permit, spent in zip(permits, times, strict=True):
            key = f"booking.a{next(serial)}"
            start = time.perf_counter()
            permit(ROLE, WORKFLOW, key, ACT)
            spent.append(time.perf_counter() - start)
    return [statistics.median(spent) for spent in times]


def _cached_turns(permitters: list[Permitter], batches: int) -> list[float]:
    """Seconds per call of each permitter asked one key again and again (after once to fill
    the cache): the median over batches of 1,000 calls, the permitters in turns."""
    times: list[list[float]] = [[] for _ in permitters]
    for permitter in permitters:
        permitter.permit(ROLE, WORKFLOW, "booking.create", ACT)
    for _ in range(batches):
        for permitter, spent in zip(permitters, times, strict=True):
            start = time.perf_counter()
            for _ in range(1000):
                permitter.permit(ROLE, WORKFLOW, "booking.create", ACT)
            spent.append((time.perf_counter() - start) / 1000)
    return [statistics.median(spent) for spent in times]


def _figures(ctx: Context, cases: list[_Case]) -> list[Figure]:
    by = {(c.shape, c.size): c for c in cases}
    small, big = SIZES
    figures: list[Figure] = []
    explain = {
        "raw": "pycasbin Enforcer over all lines, enforce_ex",
        "cold": "Permitter, first call per key (per-(workflow, act) enforcer built)",
        "cached": "Permitter, repeated key",
    }
    for shape in ("spread", "worst"):
        prefix = "" if shape == "spread" else "worst_"
        where = (
            "lines spread over workflows"
            if shape == "spread"
            else "all lines in the request's workflow"
        )
        for what in ("raw", "cold", "cached"):
            base = statistics.median(getattr(by[(shape, small)], what))
            for size in SIZES:
                runs = getattr(by[(shape, size)], what)
                ratio = statistics.median(runs) / base
                targeted = size == big and what != "raw"
                figures.append(
                    Figure(
                        f"{NAME}.{prefix}{what}_{size}",
                        tuple(runs),
                        "us/permit",
                        baseline=f"{NAME}.{prefix}{what}_{small}",
                        ratio=ratio,
                        target=f"{big:,}/{small} < {TARGET}x" if targeted else None,
                        met=ratio < TARGET if targeted else None,
                        note=f"{explain[what]}; {size:,} lines, {where}"
                        + (f"; {big:,}/{small} = {ratio:.2f}x" if size == big else ""),
                        digits=2 if what == "cached" else 1,
                    )
                )
        for size in SIZES:
            figures.append(
                Figure(
                    f"{NAME}.{prefix}build_{size}",
                    tuple(by[(shape, size)].build),
                    "ms",
                    note=f"first permit on a fresh Permitter (builds the request's per-domain "
                    f"enforcer); {size:,} lines, {where}",
                    digits=2,
                )
            )
    return [ctx.figure(f) for f in figures]
