"""A witness cosigning a real gateway's checkpoints at 1,000,000 entries: latency of one round.

A copy of the ledger built for ``ledger_verify`` (so the shared one stays as it is), in a
database brought to the gateway's schema first, is handed
over to a key named for its origin (``Ledger.rotate_key``: the gateway signs with a key named
as its log), and a real gateway (``create_app`` under uvicorn on loopback, SQLite) serves it,
trusting one witness. Each round, 100 entries are appended and a checkpoint signed (another
``Ledger`` on the same database, as a second gateway process would), then one witness round
runs as ``python -m ledger witness --once`` does it (``ledger.witness.run_witness``, in this
process): fetch the checkpoint, check its signature, fetch and check a consistency proof from
the last cosigned one, cosign, record the state (fsync), post the cosignature (the gateway
verifies it and keeps it with the checkpoint). The figure is the median round, with its p99.
Every round must cosign; the last checkpoint must then carry the cosignature.
"""

from __future__ import annotations

import io
import shutil
import socket
import sqlite3
import statistics
import threading
import time
from pathlib import Path

import uvicorn

from bench._common import Context, Figure, percentile
from bench.dataset import KEY_NAME, ORIGIN, BigLedger, proposal_records, remove_sqlite
from bench.ledger_verify import sizes
from gateway.db.connect import open_engine
from gateway.db.migrations import upgrade
from gateway.db.tables import create_gateway_tables
from gateway.identity import TokenBook
from gateway.server.app import create_app
from gateway.settings import Settings
from ledger.cosignature import CosignatureVerifier, verify_cosignatures
from ledger.database import create_engine, sqlite_url
from ledger.keys import generate_signing_key, generate_witness_key, load_signing_key
from ledger.models import LEDGER_TABLES
from ledger.store import Ledger
from ledger.witness import run_witness

NAME = "witness"
GROUP = "ledger"
DESCRIPTION = "a witness round (fetch, consistency proof, cosign, post) against a 1M-entry gateway"

_PER_ROUND = 100  # entries appended between two rounds


def run(ctx: Context) -> list[Figure]:
    """Serve a copy of the big ledger and time witness rounds against it."""
    with ctx.step(f"setup: the {sizes(ctx):,}-entry ledger"):
        big = BigLedger.ensure(ctx, sizes(ctx))
    work = ctx.out / "witness"
    shutil.rmtree(work, ignore_errors=True)
    (work / "data").mkdir(parents=True, mode=0o700)
    db = work / "ledger.db"
    with ctx.step(f"a gateway's database at head, holding a copy of {big.db}'s ledger"):
        engine = create_engine(sqlite_url(db))
        upgrade(engine)
        engine.dispose()
        conn = sqlite3.connect(db)
        conn.execute("ATTACH DATABASE ? AS big", (str(big.db_path),))
        for table in LEDGER_TABLES:
            conn.execute(f"INSERT INTO {table.name} SELECT * FROM big.{table.name}")
        conn.commit()
        conn.close()
    try:
        return _measure(ctx, big, work, db)
    finally:
        remove_sqlite(db)
        shutil.rmtree(work, ignore_errors=True)


def _measure(ctx: Context, big: BigLedger, work: Path, db: Path) -> list[Figure]:
    key = work / "data" / "ledger-signing-key.pem"
    witness_key = work / "witness.key"
    cosigner = generate_witness_key(witness_key, "bench.witness.example/w1")
    (work / "witness.pub").write_text(cosigner.vkey + "\n")
    engine = create_engine(sqlite_url(db))
    signer = generate_signing_key(key, ORIGIN)
    with ctx.step("handing the copy over to a key named for its origin"):
        old = load_signing_key(Path(big.key), KEY_NAME)
        with Ledger(engine, origin=ORIGIN, signer=old, checkpoint_interval=None) as ledger:
            ledger.rotate_key(signer)
    settings = Settings(
        data_dir=work / "data",
        policies=Path(__file__).resolve().parents[1] / "policies",
        database_url=sqlite_url(db),
        ledger_origin=ORIGIN,
        witness_keys=work / "witness.pub",
        checkpoint_interval=3600.0,
    )
    log_key = work / "mandate.pub"
    log_key.write_text(signer.vkey + "\n")
    with ctx.step("starting a gateway on it (migrations, bundle)"):
        server, thread, url = _serve(settings)
    appender = Ledger(engine, origin=ORIGIN, signer=signer, checkpoint_interval=None).open()
    try:
        gateway_engine = open_engine(settings)
        create_gateway_tables(gateway_engine)
        token, _ = TokenBook(gateway_engine).create(name="bench-witness", role="witness")
        gateway_engine.dispose()
        rounds = 12 if ctx.quick else 20 * ctx.repeat
        ctx.log(
            f"{rounds} rounds on {appender.size():,} entries: {_PER_ROUND} entries and a "
            "checkpoint appended, then one witness round, timed"
        )
        times = []
        records = proposal_records(_PER_ROUND, seed=5)
        state = work / "witness.state"
        for number in range(rounds):
            appender.append_many(records)
            appender.checkpoint()
            out, err = io.StringIO(), io.StringIO()
            start = time.perf_counter()
            code = run_witness(
                url,
                log_key,
                witness_key,
                state,
                once=True,
                interval=1.0,
                token=token,
                out=out,
                err=err,
            )
            elapsed = (time.perf_counter() - start) * 1000
            if code != 0 or "cosigned size" not in out.getvalue():
                raise RuntimeError(f"witness round {number} failed: {err.getvalue().strip()}")
            if number:  # the first round trusts on first use: no proof to check
                times.append(elapsed)
        latest = appender.latest_checkpoint()
        assert latest is not None
        witness = CosignatureVerifier.from_vkey(cosigner.vkey)
        found, _ = verify_cosignatures(latest.note, [witness])
        if not found:
            raise RuntimeError("the last checkpoint does not carry the witness's cosignature")
        size = latest.size
    finally:
        appender.close()
        server.should_exit = True
        thread.join(timeout=30)
        engine.dispose()
    return [
        ctx.figure(
            Figure(
                f"{NAME}.round",
                (statistics.median(times),),
                "ms",
                note=f"p99 {percentile(times, 99):.1f} ms, max {max(times):.1f} ms over "
                f"{len(times)} rounds at {size:,} entries; each round: GET checkpoint, GET "
                "consistency proof, verify, cosign, state fsynced twice, POST cosignature",
                digits=1,
            )
        )
    ]


def _serve(settings: Settings) -> tuple[uvicorn.Server, threading.Thread, str]:
    app = create_app(settings)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the gateway did not start")
        time.sleep(0.05)
    return server, thread, f"http://127.0.0.1:{port}"
