"""Durable appends/s on SQLite: the Ledger with concurrent appenders against raw ``sqlite3``.

Every figure counts appends that are durable when counted: SQLite in WAL mode with
``synchronous=FULL`` (as ``ledger.database.create_engine`` sets it), so each commit waits for
fsync. Each run starts from a fresh database file.

- ``async_32``: 32 asyncio tasks, each awaiting ``append_many_async`` with one record at a time
  (the gateway's model); the writer thread groups whatever is queued into one transaction.
- ``threads_32``: 32 threads, each calling ``append`` one record at a time.
- ``single``: one caller, one ``append`` at a time (one transaction per entry).
- baselines: one ``sqlite3`` connection, same pragmas, ``BEGIN IMMEDIATE``, ``executemany`` of
  the same rows (the bytes a Ledger stored for the same records: seq, kind, leaf_hash, data,
  nodes) into the same table, 100, 32 and 1 rows per transaction.

Ratios are against ``raw_100`` measured in the same run; the issue asks ``async_32`` (and the
threads) to reach at least 50 % of it. Runs of the variants are interleaved so that a noisy
neighbour slows them alike.
"""

from __future__ import annotations

import asyncio
import sqlite3
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench._common import Context, Figure
from bench.dataset import KEY_NAME, ORIGIN, mean_body_bytes, proposal_records, remove_sqlite
from ledger.database import create_engine, create_tables, sqlite_url
from ledger.note import NoteSigner
from ledger.store import Ledger, Record

NAME = "ledger_append"
GROUP = "ledger"
DESCRIPTION = "durable appends/s, 32 concurrent appenders vs raw sqlite3 (WAL, synchronous=FULL)"

CONCURRENCY = 32
TARGET_RATIO = 0.50

Row = tuple[int, str, bytes, bytes, bytes]
_INSERT = "INSERT INTO ledger_entries (seq, kind, leaf_hash, data, nodes) VALUES (?, ?, ?, ?, ?)"


def run(ctx: Context) -> list[Figure]:
    """Measure every variant ``ctx.repeat`` times, interleaved; print the medians and ratios."""
    work = ctx.out / "append"
    work.mkdir(parents=True, exist_ok=True)
    n_concurrent = 640 if ctx.quick else 16_000  # appends per run, 32 appenders
    n_single = 64 if ctx.quick else 1_000
    signer = NoteSigner(KEY_NAME, Ed25519PrivateKey.generate())

    with ctx.step(f"setup: generating {n_concurrent:,} proposal records and their stored rows"):
        records = proposal_records(n_concurrent, seed=11)
        rows = _ledger_rows(work / "rows.db", records, signer)
        ctx.log(
            f"  {len(records):,} records, mean body {mean_body_bytes(records):.0f} B, "
            f"mean stored entry {sum(len(r[3]) for r in rows) / len(rows):.0f} B; "
            f"{len(rows):,} rows to insert raw (the same entries, with key/checkpoint rows)"
        )
    raw_rows = rows[:n_concurrent]

    variants = [
        _Variant("raw_100", lambda db: _raw(db, raw_rows, 100), len(raw_rows),
                 "baseline: raw sqlite3, 100 rows per transaction"),
        _Variant("raw_32", lambda db: _raw(db, raw_rows, 32), len(raw_rows),
                 "raw sqlite3, 32 rows per transaction (the most 32 appenders can group)"),
        _Variant("raw_1", lambda db: _raw(db, raw_rows[:n_single], 1), n_single,
                 "raw sqlite3, 1 row per transaction"),
        _Variant("async_32", lambda db: _async(db, records, signer), len(records),
                 "Ledger, 32 asyncio tasks, append_many_async (the gateway's model)", True,
                 "raw_32"),
        _Variant("threads_32", lambda db: _threads(db, records, signer), len(records),
                 "Ledger, 32 threads, append", True, "raw_32"),
        _Variant("single", lambda db: _single(db, records[:n_single], signer), n_single,
                 "Ledger, 1 appender, append", False, "raw_1"),
    ]  # fmt: skip
    ctx.log(
        f"measuring {', '.join(v.name for v in variants)}: {n_concurrent:,} appends per run "
        f"({n_single:,} for raw_1 and single), {ctx.repeat} runs each, interleaved"
    )
    for rep in range(ctx.repeat):
        for variant in variants:
            db = work / f"{variant.name}.db"
            remove_sqlite(db)
            variant.rates.append(variant.count / variant.measure(db))
            remove_sqlite(db)
        ctx.log(
            f"  run {rep + 1}/{ctx.repeat}: "
            + ", ".join(f"{v.name} {v.rates[-1]:,.0f}/s" for v in variants)
        )

    medians = {v.name: statistics.median(v.rates) for v in variants}
    base = medians["raw_100"]
    figures = []
    for v in variants:
        ratio = medians[v.name] / base
        note = v.note
        if v.versus is not None:
            note += f" ({medians[v.name] / medians[v.versus]:.1%} of {v.versus})"
        figures.append(
            ctx.figure(
                Figure(
                    f"{NAME}.{v.name}",
                    tuple(v.rates),
                    "appends/s",
                    baseline=f"{NAME}.raw_100",
                    ratio=ratio,
                    target=f">= {TARGET_RATIO:.0%} of raw_100" if v.targeted else None,
                    met=ratio >= TARGET_RATIO if v.targeted else None,
                    note=note,
                )
            )
        )
    return figures


@dataclass
class _Variant:
    """One way of appending: how to run it on a fresh database, and its rates so far."""

    name: str
    measure: Callable[[Path], float]  # seconds to append ``count`` entries durably
    count: int
    note: str
    targeted: bool = False  # the 50 % target applies
    versus: str | None = None  # a second baseline worth showing (same rows per commit)
    rates: list[float] = field(default_factory=list)


def _engine(db: Path) -> sa.Engine:
    return create_engine(sqlite_url(db))


def _open_ledger(db: Path, signer: NoteSigner) -> tuple[sa.Engine, Ledger]:
    engine = _engine(db)
    # The default checkpoint settings (every 1000 entries or 60 s), as the gateway runs it.
    ledger = Ledger(engine, origin=ORIGIN, signer=signer).open()
    return engine, ledger


def _ledger_rows(db: Path, records: Sequence[Record], signer: NoteSigner) -> list[Row]:
    """The rows a Ledger stores for ``records``: what the raw baselines insert."""
    remove_sqlite(db)
    engine, ledger = _open_ledger(db, signer)
    try:
        for at in range(0, len(records), 1000):
            ledger.append_many(records[at : at + 1000])
        with engine.connect() as conn:
            result = conn.exec_driver_sql(
                "SELECT seq, kind, leaf_hash, data, nodes FROM ledger_entries ORDER BY seq"
            )
            rows = [(int(a), str(b), bytes(c), bytes(d), bytes(e)) for a, b, c, d, e in result]
    finally:
        ledger.close()
        engine.dispose()
        remove_sqlite(db)
    return rows


def _raw(db: Path, rows: Sequence[Row], per_transaction: int) -> float:
    """Seconds for one sqlite3 connection to insert ``rows``, ``per_transaction`` per commit."""
    engine = _engine(db)
    create_tables(engine)  # the same table, made the same way
    engine.dispose()
    conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        start = time.perf_counter()
        for at in range(0, len(rows), per_transaction):
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(_INSERT, rows[at : at + per_transaction])
            conn.execute("COMMIT")
        return time.perf_counter() - start
    finally:
        conn.close()


def _async(db: Path, records: Sequence[Record], signer: NoteSigner) -> float:
    """Seconds for 32 asyncio tasks to append ``records``, one ``append_many_async`` each."""
    engine, ledger = _open_ledger(db, signer)
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


def _threads(db: Path, records: Sequence[Record], signer: NoteSigner) -> float:
    """Seconds for 32 threads to append ``records``, one ``append`` call each."""
    engine, ledger = _open_ledger(db, signer)
    shares = [records[i::CONCURRENCY] for i in range(CONCURRENCY)]
    ready = threading.Barrier(CONCURRENCY + 1)
    errors: list[BaseException] = []

    def appender(share: Sequence[Record]) -> None:
        ready.wait()
        try:
            for r in share:
                ledger.append(r.kind, actor=r.actor, subject=r.subject, body=r.body)
        except BaseException as exc:  # reported after the join
            errors.append(exc)

    threads = [threading.Thread(target=appender, args=(share,)) for share in shares]
    try:
        for thread in threads:
            thread.start()
        ready.wait()
        start = time.perf_counter()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - start
    finally:
        ledger.close()
        engine.dispose()
    if errors:
        raise errors[0]
    return seconds


def _single(db: Path, records: Sequence[Record], signer: NoteSigner) -> float:
    """Seconds for one caller to append ``records`` one at a time."""
    engine, ledger = _open_ledger(db, signer)
    try:
        start = time.perf_counter()
        for r in records:
            ledger.append(r.kind, actor=r.actor, subject=r.subject, body=r.body)
        return time.perf_counter() - start
    finally:
        ledger.close()
        engine.dispose()
