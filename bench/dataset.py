"""Generated data the benches share: realistic records, and a big ledger with its export.

The big ledger (1,000,000 entries in the full run) is built once under ``bench/out/`` and reused
while its metadata file says it is complete and the files it names are still there. It is a real
``Ledger`` on SQLite, appended to with ``append_many`` in batches of 1,000 records, signing a
checkpoint every 1,000 entries; its export is written with ``ledger.export.write_export``.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson

from bench._common import Context
from ledger.database import create_engine, sqlite_url
from ledger.export import write_export
from ledger.keys import load_or_create_signing_key
from ledger.store import Ledger, Record

__all__ = [
    "KEY_NAME",
    "ORIGIN",
    "BigLedger",
    "proposal_record",
    "proposal_records",
    "read_through",
    "remove_sqlite",
]

ORIGIN = "bench.mandate.example/ledger"
KEY_NAME = "bench.mandate.example"
_FORMAT = 3  # bump when the data generated here changes, so old data is rebuilt
_BATCH = 1000
_CHECKPOINT_EVERY = 1000

_WORKFLOWS = {
    "refund-approval": ("payments.refund", "refund"),
    "vendor-payment": ("payments.transfer", "accounts_payable"),
    "credit-limit-change": ("credit.limit.update", "credit_review"),
    "account-closure": ("accounts.close", "customer_request"),
    "chargeback-dispute": ("disputes.respond", "chargeback"),
    "invoice-write-off": ("ledger.write_off", "collections"),
}
_CURRENCIES = ("EUR", "USD", "GBP", "CHF")
_MEMOS = (
    "damaged on delivery",
    "duplicate card charge",
    "quarterly settlement",
    "limit review, on-time payer",
    "service not delivered",
    "below materiality threshold",
)
_RULES = ("amount.limit", "counterparty.sanctions", "tier.allowance", "four_eyes", "velocity")


_WORKFLOW_NAMES = tuple(_WORKFLOWS)
_OUTCOMES = ("allow", "review", "deny")
_RULE_SETS = tuple(list(c) for k in (1, 2, 3) for c in itertools.combinations(sorted(_RULES), k))


def proposal_body(bits: int, i: int) -> dict[str, object]:
    """A gateway proposal as the ledger records it: about 420-490 bytes of canonical JSON.

    ``bits`` is a random integer of at least 200 bits that every field takes a slice of (one
    call into the generator per record keeps a 1M-entry build from waiting on it). Money and
    confidence are strings: entries hold no floats.
    """
    workflow = _WORKFLOW_NAMES[(bits & 0xFF) % len(_WORKFLOW_NAMES)]
    action_type, case_type = _WORKFLOWS[workflow]
    cents = 100 + (bits >> 8 & 0x3FFFFF)  # up to about 42,000.00
    return {
        "proposal_id": f"prop_{i:010d}_{bits >> 30 & 0xFFFFFFFFFF:010x}",
        "workflow": workflow,
        "action_type": action_type,
        "resource": f"acct:{(bits >> 70 & 0x7FFFFFF) % 10**8:08d}/invoice/"
        f"INV-{(bits >> 97 & 0xFFFFF) % 10**6:06d}",
        "params": {
            "amount": f"{cents // 100}.{cents % 100:02d}",
            "currency": _CURRENCIES[bits >> 117 & 3],
            "counterparty": f"vendor-{(bits >> 119 & 0x1FFF) % 5000:04d}",
            "memo": _MEMOS[(bits >> 132 & 0xFF) % len(_MEMOS)],
            "due": f"2025-{1 + (bits >> 140 & 0xF) % 12:02d}-{1 + (bits >> 144 & 0x1F) % 28:02d}",
        },
        "case_type": case_type,
        "confidence": f"0.{(bits >> 149 & 0x7F) % 100:02d}",
        "agent": {
            "id": f"agent-{bits >> 156 & 0x3F:02d}",
            "run": f"{bits >> 162 & (2**64 - 1):016x}",
        },
        "decision": {
            "outcome": _OUTCOMES[(bits >> 226 & 0xF) % 3],
            "rules": _RULE_SETS[(bits >> 230 & 0xFF) % len(_RULE_SETS)],
        },
    }


def proposal_record(rng: random.Random, i: int) -> Record:
    """One ``proposal`` record with a realistic body, actor and subject."""
    bits = rng.getrandbits(256)
    return Record(
        "proposal",
        actor=f"agent:claims-bot-{bits >> 240 & 7}",
        subject=f"case:C-{(bits >> 243) % 10**7:07d}",
        body=proposal_body(bits, i),
    )


def proposal_records(count: int, *, seed: int = 2, start: int = 0) -> list[Record]:
    """``count`` records from a seeded generator (the same every run)."""
    rng = random.Random(seed)
    return [proposal_record(rng, start + i) for i in range(count)]


def mean_body_bytes(records: list[Record]) -> float:
    """The mean size of the records' bodies as JSON (close to their canonical size)."""
    sizes = [len(orjson.dumps(r.body, option=orjson.OPT_SORT_KEYS)) for r in records]
    return sum(sizes) / max(1, len(sizes))


def read_through(path: Path) -> int:
    """Read a file once (to put it in the page cache); return its size in bytes."""
    total = 0
    with path.open("rb", buffering=0) as file:
        while block := file.read(8 << 20):
            total += len(block)
    return total


def remove_sqlite(path: Path) -> None:
    """Delete a SQLite file with its WAL and shared-memory files."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


@dataclass
class BigLedger:
    """A ledger of ``entries`` entries on SQLite and its export, as built (or found) on disk."""

    db: str
    export: str
    key: str
    vkey: str
    entries: int  # entries in the export (its closing checkpoint's size)
    db_size: int  # entries in the database (one more when a checkpoint entry closes it)
    root: str
    export_bytes: int
    build_seconds: float
    append_seconds: float  # of build_seconds, the time spent inside append_many
    export_seconds: float
    mean_body_bytes: float
    built_at: str
    requested: int = 0  # the size asked for (``entries`` should equal it)
    format: int = _FORMAT

    @property
    def db_path(self) -> Path:
        """The SQLite file."""
        return Path(self.db)

    @property
    def export_path(self) -> Path:
        """The JSON Lines export."""
        return Path(self.export)

    def engine_url(self) -> str:
        """The SQLAlchemy URL of the database."""
        return sqlite_url(self.db_path)

    @classmethod
    def ensure(cls, ctx: Context, entries: int) -> BigLedger:
        """Reuse the ledger of ``entries`` entries under ``ctx.out`` or build it now."""
        ctx.out.mkdir(parents=True, exist_ok=True)
        stem = ctx.out / f"ledger-{entries}"
        meta_path = stem.with_suffix(".json")
        found = cls._load(meta_path)
        if found is not None and found.requested == entries and found.db_path.exists():
            if (
                found.export_path.exists()
                and found.export_path.stat().st_size == found.export_bytes
            ):
                ctx.log(
                    f"reusing {found.db} ({found.db_size:,} entries, built {found.built_at} in "
                    f"{found.build_seconds:.1f} s) and its export {found.export} "
                    f"({found.export_bytes / 1e6:,.0f} MB, written in {found.export_seconds:.1f} s)"
                )
                return found
            ctx.log(f"{found.export} is missing or changed: writing the export again")
            found.export_seconds = _export(ctx, found)
            found.export_bytes = found.export_path.stat().st_size
            meta_path.write_text(json.dumps(asdict(found), indent=2))
            return found
        return cls._build(ctx, stem, entries)

    @staticmethod
    def _load(meta_path: Path) -> BigLedger | None:
        try:
            raw = json.loads(meta_path.read_text())
            if raw.get("format") != _FORMAT:
                return None
            return BigLedger(**raw)
        except (OSError, ValueError, TypeError):
            return None

    @classmethod
    def _build(cls, ctx: Context, stem: Path, entries: int) -> BigLedger:
        db = stem.with_suffix(".db")
        key = stem.with_suffix(".key")
        meta_path = stem.with_suffix(".json")
        meta_path.unlink(missing_ok=True)
        remove_sqlite(db)
        key.unlink(missing_ok=True)
        ctx.log(
            f"building {db}: a Ledger on SQLite (WAL, synchronous=FULL), {entries:,} entries "
            f"appended with append_many in batches of {_BATCH}, checkpoint every "
            f"{_CHECKPOINT_EVERY} (done once, then reused)"
        )
        signer = load_or_create_signing_key(key, KEY_NAME)
        engine = create_engine(sqlite_url(db))
        sample = proposal_records(200, seed=99)
        start = time.perf_counter()
        last_report, append_seconds = start, 0.0
        try:
            with Ledger(
                engine,
                origin=ORIGIN,
                signer=signer,
                checkpoint_every=_CHECKPOINT_EVERY,
                checkpoint_interval=None,
            ) as ledger:
                size, done, rng = ledger.size(), 0, random.Random(7)
                while size < entries:
                    n = min(_BATCH, entries - size)
                    if n < entries - size <= n + 2:
                        # The key and checkpoint entries the ledger adds must not land on the
                        # target: end with a batch of exactly what is missing, so the export
                        # covers ``entries`` entries.
                        n = max(1, n - 2)
                    batch = [proposal_record(rng, done + i) for i in range(n)]
                    began = time.perf_counter()
                    ledger.append_many(batch)
                    append_seconds += time.perf_counter() - began
                    done += n
                    size = ledger.size()
                    now = time.perf_counter()
                    if now - last_report >= 10:
                        last_report = now
                        ctx.log(f"  {size:,} entries, {size / (now - start):,.0f} entries/s")
                db_size = ledger.size()
                build_seconds = time.perf_counter() - start
                ctx.log(
                    f"built {db_size:,} entries in {build_seconds:.1f} s "
                    f"({db_size / build_seconds:,.0f} entries/s); {append_seconds:.1f} s of it "
                    f"inside append_many ({db_size / append_seconds:,.0f} entries/s), the rest "
                    "(generating the records)"
                )
        finally:
            engine.dispose()
        big = BigLedger(
            db=str(db),
            export=str(stem.with_suffix(".jsonl")),
            key=str(key),
            vkey=signer.vkey,
            entries=0,
            db_size=db_size,
            root="",
            export_bytes=0,
            build_seconds=build_seconds,
            append_seconds=append_seconds,
            export_seconds=0.0,
            mean_body_bytes=mean_body_bytes(sample),
            built_at=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            requested=entries,
        )
        big.export_seconds = _export(ctx, big)
        big.export_bytes = big.export_path.stat().st_size
        meta_path.write_text(json.dumps(asdict(big), indent=2))
        return big


def _export(ctx: Context, big: BigLedger) -> float:
    """Write the export with ``write_export`` (read-only ledger, the build's key signs none)."""
    signer = load_or_create_signing_key(Path(big.key), KEY_NAME)
    engine = create_engine(big.engine_url())
    start = time.perf_counter()
    try:
        with (
            Ledger(engine, origin=ORIGIN, signer=signer, checkpoint_interval=None) as ledger,
            big.export_path.open("wb") as out,
        ):
            checkpoint = write_export(ledger, out)
            big.db_size = ledger.size()
    finally:
        engine.dispose()
    seconds = time.perf_counter() - start
    big.entries = checkpoint.size
    big.root = checkpoint.root_hash.hex()
    ctx.log(
        f"wrote {big.export}: {checkpoint.size:,} entries and a closing checkpoint in "
        f"{seconds:.1f} s"
    )
    return seconds
