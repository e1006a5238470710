"""What sealing personal data costs per record, and what an erasure costs, on SQLite.

The records are the proposals of ``bench.dataset`` with a customer added to their params (id,
email, name), one of 1,000 customers each. The plain variant appends them as they are; the
sealed one seals the three customer fields with the customer as data subject, as the gateway
will for a workflow that marks them.

- ``prepare_plain`` / ``prepare_sealed``: microseconds per record to validate and encode it
  (``ledger.batch.prepare``, in the caller's thread): the CPU cost of three salted commitments,
  the keyed digest and the check that the id is not left in clear.
- ``plain_async_32`` / ``sealed_async_32``: durable appends/s with 32 asyncio appenders (the
  gateway's model), from a fresh database file each run. A sealed batch also inserts its
  ``ledger_sealed`` rows, so it takes the transaction path instead of the one-statement insert.
- ``erase``: milliseconds for ``Ledger.erase`` of one customer (about 16 sealed records, 3
  values each) in that ledger, WAL emptied included; ``append_one``: one plain append on the same
  ledger, for scale.

Runs of the variants are interleaved, so that a noisy neighbour slows them alike.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench._common import Context, Figure
from bench.dataset import KEY_NAME, ORIGIN, proposal_records, remove_sqlite
from ledger.batch import prepare
from ledger.database import create_engine, sqlite_url
from ledger.note import NoteSigner
from ledger.sealing import SubjectKey
from ledger.store import Ledger, Record

NAME = "ledger_seal"
GROUP = "ledger"
DESCRIPTION = "sealing 3 personal fields per record and erasing a data subject, vs plain appends"

CONCURRENCY = 32
CUSTOMERS = 1000
SEALED = frozenset({"params.customer", "params.customer_email", "params.customer_name"})
SUBJECT_KEY = bytes(range(32))


def run(ctx: Context) -> list[Figure]:
    """Measure every variant ``ctx.repeat`` times, interleaved; print medians and ratios."""
    work = ctx.out / "seal"
    work.mkdir(parents=True, exist_ok=True)
    count = 640 if ctx.quick else 16_000
    customers = 40 if ctx.quick else CUSTOMERS
    erasures = 4 if ctx.quick else 20
    signer = NoteSigner(KEY_NAME, Ed25519PrivateKey.generate())
    plain, sealed = _records(count, customers)
    key = SubjectKey(SUBJECT_KEY)

    runs: dict[str, list[float]] = {
        name: []
        for name in (
            "prepare_plain",
            "prepare_sealed",
            "plain_async_32",
            "sealed_async_32",
            "erase",
            "append_one",
        )
    }
    ctx.log(
        f"{count:,} records per run, {customers:,} customers (about {count // customers} "
        f"records each), {erasures} erasures per run, {ctx.repeat} runs"
    )
    for rep in range(ctx.repeat):
        runs["prepare_plain"].append(_prepare_us(plain, None))
        runs["prepare_sealed"].append(_prepare_us(sealed, key))
        db = work / "plain.db"
        remove_sqlite(db)
        runs["plain_async_32"].append(count / _append_async(db, plain, signer))
        remove_sqlite(db)
        db = work / "sealed.db"
        remove_sqlite(db)
        runs["sealed_async_32"].append(count / _append_async(db, sealed, signer))
        erase_ms, append_ms = _erase_ms(db, signer, erasures)
        runs["erase"].append(erase_ms)
        runs["append_one"].append(append_ms)
        remove_sqlite(db)
        ctx.log(
            f"  run {rep + 1}/{ctx.repeat}: "
            + ", ".join(f"{n} {v[-1]:,.1f}" for n, v in runs.items())
        )

    median = {name: statistics.median(values) for name, values in runs.items()}
    per_record = median["prepare_sealed"] - median["prepare_plain"]
    figures = [
        Figure(f"{NAME}.prepare_plain", tuple(runs["prepare_plain"]), "µs/record", digits=1,
               note="validate and encode one record, nothing sealed"),
        Figure(f"{NAME}.prepare_sealed", tuple(runs["prepare_sealed"]), "µs/record", digits=1,
               baseline=f"{NAME}.prepare_plain",
               ratio=median["prepare_sealed"] / median["prepare_plain"],
               note=f"3 fields sealed: +{per_record:.1f} µs per record in the caller's thread"),
        Figure(f"{NAME}.plain_async_32", tuple(runs["plain_async_32"]), "appends/s",
               note="32 asyncio appenders, nothing sealed"),
        Figure(f"{NAME}.sealed_async_32", tuple(runs["sealed_async_32"]), "appends/s",
               baseline=f"{NAME}.plain_async_32",
               ratio=median["sealed_async_32"] / median["plain_async_32"],
               note="32 asyncio appenders, 3 fields sealed per record"),
        Figure(f"{NAME}.erase", tuple(runs["erase"]), "ms", digits=1,
               baseline=f"{NAME}.append_one", ratio=median["erase"] / median["append_one"],
               note=f"erase one customer (~{count // customers} records, 3 values each), "
               "WAL emptied"),
        Figure(f"{NAME}.append_one", tuple(runs["append_one"]), "ms", digits=2,
               note="one plain append on the same ledger, one caller"),
    ]  # fmt: skip
    return [ctx.figure(figure) for figure in figures]


def _records(count: int, customers: int) -> tuple[list[Record], list[Record]]:
    """The same bodies with a customer in their params: as they are, and sealed."""
    plain, sealed = [], []
    for i, record in enumerate(proposal_records(count, seed=13)):
        customer = f"C-{i % customers:04d}"
        body: dict[str, Any] = dict(record.body)
        body["params"] = {
            **body["params"],
            "customer": customer,
            "customer_email": f"customer.{i % customers:04d}@example.org",
            "customer_name": f"Customer {i % customers:04d}",
        }
        plain.append(Record(record.kind, record.actor, record.subject, body))
        sealed.append(Record(record.kind, record.actor, record.subject, body, SEALED, customer))
    return plain, sealed


def _prepare_us(records: Sequence[Record], key: SubjectKey | None) -> float:
    """Microseconds per record for ``prepare`` over ``records``."""
    start = time.perf_counter()
    for record in records:
        prepare(record, key)
    return (time.perf_counter() - start) / len(records) * 1e6


def _open(db: Path, signer: NoteSigner) -> tuple[sa.Engine, Ledger]:
    engine = create_engine(sqlite_url(db))
    # The default checkpoint settings (every 1000 entries or 60 s), as the gateway runs it.
    ledger = Ledger(engine, origin=ORIGIN, signer=signer, subject_key=SUBJECT_KEY).open()
    return engine, ledger


def _append_async(db: Path, records: Sequence[Record], signer: NoteSigner) -> float:
    """Seconds for 32 asyncio tasks to append ``records``, one ``append_many_async`` each."""
    engine, ledger = _open(db, signer)
    shares = [records[i::CONCURRENCY] for i in range(CONCURRENCY)]

    async def appender(share: Sequence[Record]) -> None:
        for record in share:
            await ledger.append_many_async([record])

    async def main() -> float:
        start = time.perf_counter()
        await asyncio.gather(*(appender(share) for share in shares))
        return time.perf_counter() - start

    try:
        return asyncio.run(main())
    finally:
        ledger.close()
        engine.dispose()


def _erase_ms(db: Path, signer: NoteSigner, erasures: int) -> tuple[float, float]:
    """Median milliseconds of erasing one customer, and of one plain append, on ``db``."""
    engine, ledger = _open(db, signer)
    erased, appended = [], []
    try:
        for n in range(erasures):
            start = time.perf_counter()
            done = ledger.erase(f"C-{n:04d}", actor="dpo", reason="art. 17 request")
            erased.append(time.perf_counter() - start)
            assert done is not None, "the customer had nothing to erase"
            start = time.perf_counter()
            ledger.append("audit", actor="bench", subject=f"audit-{n}", body={"n": n})
            appended.append(time.perf_counter() - start)
    finally:
        ledger.close()
        engine.dispose()
    return statistics.median(erased) * 1e3, statistics.median(appended) * 1e3
