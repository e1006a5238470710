"""Proof generation from the store at 1,000,000 entries: latency of single calls.

Uses the ledger built for ``ledger_verify`` (reused from ``bench/out/``), opened read-only.
Each round times ``inclusion_proof(index, size)``, ``consistency_proof(size1, size2)`` and
``root(size)`` for random arguments, one call at a time, as an API request would make them; the
figure is the median over the rounds' medians, with the p99 over every call. The issue asks for
a median under 2 ms. A primary-key read through the same API (``leaf_hash(seq)``) is the
reference: the cost of any call that checks out a connection and runs a query.

Every proof is then verified once, outside the timing, with ``ledger.merkle.verify_*`` against
roots from ``root(size)``; those roots are themselves checked against signed checkpoints, and
the leaf hashes against the entries' bytes. Any failure fails the bench.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import sqlalchemy as sa

from bench._common import Context, Figure, percentile
from bench.dataset import ORIGIN, BigLedger, read_through
from bench.ledger_verify import sizes
from ledger.database import create_engine
from ledger.merkle import leaf_hash, verify_consistency, verify_inclusion
from ledger.store import Ledger

NAME = "ledger_proofs"
GROUP = "ledger"
DESCRIPTION = "inclusion/consistency proof and root latency from the store at 1M entries"

TARGET_MS = 2.0


def run(ctx: Context) -> list[Figure]:
    """Time random proofs and roots in rounds; verify every proof afterwards."""
    with ctx.step(f"setup: the {sizes(ctx):,}-entry ledger"):
        big = BigLedger.ensure(ctx, sizes(ctx))
    with ctx.step(f"warming the page cache with {big.db} (random proofs read random pages)"):
        read_through(big.db_path)
    engine = create_engine(big.engine_url())
    ledger = Ledger(engine, origin=ORIGIN).open()  # no signer: read-only
    try:
        return _measure(ctx, ledger, engine)
    finally:
        ledger.close()
        engine.dispose()


@dataclass
class _Op:
    """One timed call: how to pick random arguments, the call, and what it gave."""

    name: str
    pick: Callable[[random.Random], tuple[int, int]]
    call: Callable[[int, int], object]
    reference: bool = False
    rounds: list[list[float]] = field(default_factory=list)  # milliseconds, per round
    done: list[tuple[tuple[int, int], object]] = field(default_factory=list)


def _ops(ledger: Ledger, n: int) -> list[_Op]:
    def inclusion_args(rng: random.Random) -> tuple[int, int]:
        size = rng.randint(1, n)
        return rng.randrange(size), size

    def consistency_args(rng: random.Random) -> tuple[int, int]:
        size2 = rng.randint(1, n)
        return rng.randint(1, size2), size2

    return [
        _Op("inclusion_proof", inclusion_args, ledger.inclusion_proof),
        _Op("consistency_proof", consistency_args, ledger.consistency_proof),
        _Op("root", lambda rng: (rng.randint(0, n), 0), lambda size, _: ledger.root(size)),
        _Op(
            "leaf_hash_read",
            lambda rng: (rng.randrange(n), 0),
            lambda seq, _: ledger.leaf_hash(seq),
            reference=True,
        ),
    ]


def _measure(ctx: Context, ledger: Ledger, engine: sa.Engine) -> list[Figure]:
    n = ledger.size()
    per_round = 40 if ctx.quick else 200
    rng = random.Random(3)
    ops = _ops(ledger, n)
    ctx.log(
        f"timing {', '.join(op.name for op in ops)} on a {n:,}-entry SQLite ledger: "
        f"{ctx.repeat} rounds of {per_round} random calls each, one at a time"
    )
    for op in ops:  # warm the connection pool, SQLAlchemy's statement cache, the page cache
        for _ in range(20):
            op.call(*op.pick(rng))
    clock = time.perf_counter_ns
    for rep in range(ctx.repeat):
        for op in ops:
            times = []
            for _ in range(per_round):
                args = op.pick(rng)
                start = clock()
                result = op.call(*args)
                times.append((clock() - start) / 1e6)
                op.done.append((args, result))
            op.rounds.append(times)
        ctx.log(
            f"  round {rep + 1}/{ctx.repeat}: "
            + ", ".join(f"{op.name} {statistics.median(op.rounds[-1]):.3f} ms" for op in ops)
        )

    figures = []
    for op in ops:
        every = [t for r in op.rounds for t in r]
        medians = tuple(statistics.median(r) for r in op.rounds)
        targeted = op.name.endswith("_proof")
        note = (
            f"p99 {percentile(every, 99):.3f} ms, max {max(every):.3f} ms over {len(every):,} calls"
        )
        if op.reference:
            note += "; reference: one primary-key read through the Ledger API"
        figures.append(
            ctx.figure(
                Figure(
                    f"{NAME}.{op.name}",
                    medians,
                    "ms",
                    target=f"median < {TARGET_MS:g} ms" if targeted else None,
                    met=statistics.median(medians) < TARGET_MS if targeted else None,
                    note=note,
                    digits=3,
                )
            )
        )

    inclusion, consistency = ops[0].done, ops[1].done
    with ctx.step(
        f"verifying the {len(inclusion):,} inclusion and {len(consistency):,} consistency "
        "proofs (not timed)"
    ):
        failures = _verify(ctx, ledger, engine, inclusion, consistency)
    figures.append(
        ctx.figure(
            Figure(
                f"{NAME}.verify_failures",
                (float(failures),),
                "failures",
                target="0",
                met=failures == 0,
                note="merkle.verify_inclusion / verify_consistency against root(size); roots "
                "checked against signed checkpoints, leaf hashes against entry bytes",
            )
        )
    )
    if failures:
        raise RuntimeError(f"{failures} proofs or roots did not verify")
    return figures


def _verify(
    ctx: Context,
    ledger: Ledger,
    engine: sa.Engine,
    inclusion: list[tuple[tuple[int, int], object]],
    consistency: list[tuple[tuple[int, int], object]],
) -> int:
    """Check every proof once; count what fails."""
    failures = 0
    roots: dict[int, bytes] = {}

    def root(size: int) -> bytes:
        if size not in roots:
            roots[size] = ledger.root(size)
        return roots[size]

    for (index, size), proof in inclusion:
        assert isinstance(proof, list)
        leaf = ledger.leaf_hash(index)
        if leaf != leaf_hash(ledger.entry(index).data):
            failures += 1
            ctx.log(f"  leaf hash of seq {index} does not match its bytes")
        if not verify_inclusion(leaf, index, size, proof, root(size)):
            failures += 1
            ctx.log(f"  inclusion proof of {index} in {size} does not verify")
    for (size1, size2), proof in consistency:
        assert isinstance(proof, list)
        if not verify_consistency(size1, size2, proof, root(size1), root(size2)):
            failures += 1
            ctx.log(f"  consistency proof {size1} -> {size2} does not verify")
    # The roots the proofs were checked against must be the ones the ledger signed.
    with engine.connect() as conn:
        signed = conn.exec_driver_sql(
            "SELECT size, root_hash FROM ledger_checkpoints ORDER BY random() LIMIT 50"
        ).all()
    for size, signed_root in signed:
        if ledger.root(int(size)) != bytes(signed_root):
            failures += 1
            ctx.log(f"  root({size}) differs from the signed checkpoint's")
    ctx.log(
        f"  checked {len(inclusion) + len(consistency):,} proofs, {len(roots):,} roots and "
        f"{len(signed)} signed checkpoint roots: {failures} failures"
    )
    return failures
