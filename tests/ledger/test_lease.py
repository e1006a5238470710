"""The signer lease against real SQLite files and real PostgreSQL schemas: one holder at a time,
released when its holder releases it, dies (SIGKILL) or loses its session; and in a ``Ledger``,
only the holder's interval timer signs.

Tests that take ``database`` run on a SQLite file and on a PostgreSQL schema of their own (the
PostgreSQL ones skip when ``MANDATE_TEST_DATABASE_URL`` is unset). A second ``SignerLease`` on
its own engine stands for another process: on SQLite a flock lock belongs to the open file
description, on PostgreSQL an advisory lock to the session, so two of them in one process
exclude each other as two processes do. Where only a process will do, a child process holds
the lease and is SIGKILLed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.engine import Engine

from ledger.database import advisory_lock_key, create_engine
from ledger.errors import StorageError
from ledger.lease import SignerLease, signer_lock_key, signer_lock_path
from ledger.note import NoteSigner
from ledger.store import Ledger
from tests.conftest import Database, postgres_url

ORIGIN = "test.mandate.example/ledger"
ROOT = Path(__file__).resolve().parents[2]

# A process that takes the lease, says whether it got it, and sleeps until it is killed.
HOLDER = """
import sys, time
from ledger.database import create_engine
from ledger.lease import SignerLease
lease = SignerLease(create_engine(sys.argv[1], schema=sys.argv[2] or None))
print("held" if lease.hold() else "not held", flush=True)
time.sleep(600)
"""


@pytest.fixture
def engines(database: Database) -> Iterator[Callable[[], Engine]]:
    """Makes engines on the test's database (one per would-be process); all disposed after."""
    yield from engine_maker(database)


@pytest.fixture
def pg_engines(pg_database: Database) -> Iterator[Callable[[], Engine]]:
    """``engines``, on PostgreSQL only."""
    yield from engine_maker(pg_database)


def engine_maker(database: Database) -> Iterator[Callable[[], Engine]]:
    made: list[Engine] = []

    def make() -> Engine:
        engine = create_engine(database.url, schema=database.schema)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.dispose()


@pytest.fixture
def leases(engines: Callable[[], Engine]) -> Iterator[Callable[[], SignerLease]]:
    """Makes leases, each on an engine of its own; all released after the test."""
    made: list[SignerLease] = []

    def make() -> SignerLease:
        lease = SignerLease(engines())
        made.append(lease)
        return lease

    yield make
    for lease in made:
        lease.release()


def wait_for(probe: Callable[[], Any], timeout: float = 15.0) -> Any:
    """Poll ``probe`` until it returns something true (a bounded wait, not a timing claim)."""
    deadline = time.monotonic() + timeout
    while not (value := probe()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {probe}")
        time.sleep(0.02)
    return value


# -- the lease ----------------------------------------------------------------------------------


def test_one_holder_at_a_time_and_the_other_takes_over_on_release(
    leases: Callable[[], SignerLease],
) -> None:
    first, second, third = leases(), leases(), leases()
    assert first.hold()
    assert not second.hold()
    assert not third.hold()
    # The holder keeps it, check after check; the others keep failing, never waiting.
    assert first.hold()
    assert first.held
    assert not second.hold()
    assert not second.held

    first.release()
    assert not first.held
    assert second.hold()
    assert not first.hold()
    assert not third.hold()
    second.release()
    assert third.hold()


def test_the_survivor_takes_over_when_the_holder_is_killed(
    database: Database, leases: Callable[[], SignerLease]
) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, database.url, database.schema or ""],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        survivor = leases()
        assert not survivor.hold()
        holder.kill()  # SIGKILL: no release, no clean-up of any kind
        holder.wait(timeout=30)
        # The kernel closes the file (and the socket: the server ends the session) at once;
        # PostgreSQL notices the closed socket a moment later.
        assert wait_for(survivor.hold)
        assert survivor.hold()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(timeout=30)


def test_the_lease_does_not_block_appends(
    engines: Callable[[], Engine], leases: Callable[[], SignerLease]
) -> None:
    lease = leases()
    assert lease.hold()
    signer = NoteSigner(ORIGIN, Ed25519PrivateKey.generate())
    # A ledger whose interval never comes: it neither holds nor needs the lease to append, and
    # its appends take the append lock, which the lease is not.
    with Ledger(engines(), origin=ORIGIN, signer=signer, checkpoint_interval=3600).open() as other:
        assert not other.signs_periodically
        other.append("audit", actor="a", subject="s", body={})
        assert other.checkpoint().size == 2
    assert lease.hold()


def test_an_in_memory_database_always_holds_the_lease() -> None:
    engine = create_engine("sqlite://")
    try:
        assert signer_lock_path(engine) is None
        one, two = SignerLease(engine), SignerLease(engine)
        assert one.hold()
        assert two.hold()
    finally:
        engine.dispose()


def test_the_sqlite_lock_file_sits_beside_the_database(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'mandate.db'}")
    try:
        lease = SignerLease(engine)
        assert lease.hold()
        assert (tmp_path / "mandate.db.signer-lock").exists()
        # Replaced under the holder (an operator's clean-up): the holder no longer counts on
        # it, and whoever locks the new file holds the lease, one at a time again.
        (tmp_path / "mandate.db.signer-lock").unlink()
        other = SignerLease(engine)
        assert other.hold()
        assert not lease.hold()
        lease.release()
        other.release()
    finally:
        engine.dispose()


# -- PostgreSQL: the session holds it ------------------------------------------------------------


def lease_backends(engine: Engine) -> list[int]:
    """The PostgreSQL backends holding the signer lease of the engine's schema."""
    with engine.connect() as conn:
        key = signer_lock_key(conn)
        return list(
            conn.execute(
                sa.text(
                    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
                    "AND classid = :high AND objid = :low AND objsubid = 1"
                ),
                {"high": (key >> 32) & 0xFFFFFFFF, "low": key & 0xFFFFFFFF},
            ).scalars()
        )


def test_a_terminated_session_loses_the_lease_and_exactly_one_takes_it(
    pg_engines: Callable[[], Engine],
) -> None:
    admin = pg_engines()
    holder, other, third = (SignerLease(pg_engines()) for _ in range(3))
    try:
        assert holder.hold()
        [pid] = lease_backends(admin)
        with admin.connect() as conn:
            assert conn.execute(sa.select(sa.func.pg_terminate_backend(pid))).scalar_one()
        wait_for(lambda: not lease_backends(admin))
        # The old holder still believes it until its next check; the next check finds out.
        assert holder.held
        assert other.hold()
        assert not holder.hold()
        assert not holder.held
        assert not third.hold()
        assert len(lease_backends(admin)) == 1
        # After the session is gone, the old holder tries again like anyone else.
        other.release()
        assert holder.hold()
        assert not third.hold()
    finally:
        for lease in (holder, other, third):
            lease.release()


def test_the_old_holder_takes_the_lease_again_if_it_checks_first(
    pg_engines: Callable[[], Engine],
) -> None:
    admin = pg_engines()
    holder, other = SignerLease(pg_engines()), SignerLease(pg_engines())
    try:
        assert holder.hold()
        [old] = lease_backends(admin)
        with admin.connect() as conn:
            conn.execute(sa.select(sa.func.pg_terminate_backend(old)))
        wait_for(lambda: not lease_backends(admin))
        assert holder.hold()
        [new] = lease_backends(admin)
        assert new != old  # a new session holds it now
        assert not other.hold()
    finally:
        holder.release()
        other.release()


def test_the_lease_key_is_the_schemas_own_and_not_the_append_locks(
    pg_engines: Callable[[], Engine],
) -> None:
    with pg_engines().connect() as conn:
        assert signer_lock_key(conn) != advisory_lock_key(conn)
    # Another schema of the same database: another ledger, another lease.
    url = postgres_url()
    schema = f"mandate_test_{os.getpid()}_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(url)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    elsewhere = create_engine(url, schema=schema)
    here, there = SignerLease(pg_engines()), SignerLease(elsewhere)
    try:
        assert here.hold()
        assert there.hold()
    finally:
        here.release()
        there.release()
        elsewhere.dispose()
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


# -- in a ledger: only the holder's timer signs ---------------------------------------------------

INTERVAL = 0.05


def kinds(ledger: Ledger) -> list[str]:
    return [ledger.entry(seq).kind for seq in range(ledger.size())]


def covered(ledger: Ledger, seq: int) -> bool:
    latest = ledger.latest_checkpoint()
    return latest is not None and latest.size > seq


def test_only_the_holders_timer_signs_and_the_other_takes_over_when_it_closes(
    engines: Callable[[], Engine],
) -> None:
    signer = NoteSigner(ORIGIN, Ed25519PrivateKey.generate())

    def ledger(interval: float) -> Ledger:
        return Ledger(
            engines(),
            origin=ORIGIN,
            signer=signer,
            checkpoint_every=1000,
            checkpoint_interval=interval,
        ).open()

    # The holder's timer would fire only after an hour: while it holds the lease, nothing is
    # signed by time, however often the other's timer fires.
    holder = ledger(3600)
    other = ledger(INTERVAL)
    try:
        assert holder.signs_periodically
        assert not other.signs_periodically
        last = other.append("audit", actor="a", subject="s", body={}).seq
        time.sleep(20 * INTERVAL)
        assert not covered(other, last)
        assert "checkpoint" not in kinds(other)
    finally:
        holder.close()
    assert not holder.signs_periodically
    # The other takes the lease at its next tick, and signs the tail.
    wait_for(lambda: covered(other, last))
    assert other.signs_periodically
    other.close()


def test_two_ledgers_on_one_database_one_checkpoint_per_new_tail(
    engines: Callable[[], Engine],
) -> None:
    signer = NoteSigner(ORIGIN, Ed25519PrivateKey.generate())
    first, second = (
        Ledger(
            engines(),
            origin=ORIGIN,
            signer=signer,
            checkpoint_every=1000,
            checkpoint_interval=INTERVAL,
        ).open()
        for _ in range(2)
    )
    try:
        assert [first.signs_periodically, second.signs_periodically] == [True, False]
        for round_ in range(3):
            appender = (first, second)[round_ % 2]
            for i in range(3):
                last = appender.append("audit", actor="a", subject=f"{round_}-{i}", body={}).seq
            wait_for(lambda: covered(first, last))  # noqa: B023 (waited on at once)
            time.sleep(10 * INTERVAL)  # ten more ticks of each timer, nothing new to sign
            tail = kinds(first)[last + 1 :]
            assert tail == ["checkpoint"]
        # The holder closes: the other signs the next tail.
        first.close()
        last = second.append("audit", actor="a", subject="after", body={}).seq
        wait_for(lambda: covered(second, last))
        assert second.signs_periodically
        time.sleep(10 * INTERVAL)
        assert kinds(second)[last + 1 :] == ["checkpoint"]
    finally:
        first.close()
        second.close()


def test_without_an_interval_or_a_key_a_ledger_signs_nothing_periodically(
    engines: Callable[[], Engine],
) -> None:
    signer = NoteSigner(ORIGIN, Ed25519PrivateKey.generate())
    with Ledger(engines(), origin=ORIGIN, signer=signer, checkpoint_interval=None) as ledger:
        assert not ledger.signs_periodically
    # A read-only ledger (no key): no writer, no lease; another may take it meanwhile.
    reader = Ledger(engines(), origin=ORIGIN, checkpoint_interval=INTERVAL).open()
    lease = SignerLease(engines())
    try:
        assert not reader.signs_periodically
        assert lease.hold()
    finally:
        lease.release()
        reader.close()


def test_the_lease_is_given_up_on_close(engines: Callable[[], Engine]) -> None:
    signer = NoteSigner(ORIGIN, Ed25519PrivateKey.generate())
    ledger = Ledger(engines(), origin=ORIGIN, signer=signer, checkpoint_interval=INTERVAL).open()
    lease = SignerLease(engines())
    try:
        assert ledger.signs_periodically
        assert not lease.hold()
        ledger.close()
        assert not ledger.signs_periodically
        assert lease.hold()
    finally:
        lease.release()
        ledger.close()


def test_a_ledger_without_the_lease_still_recovers_from_a_failure_by_itself(
    engines: Callable[[], Engine],
) -> None:
    """The periodic request is also what clears ``failure`` once the database is back (what
    ``/readyz`` reports): one that does not hold the lease still sends an empty one then."""
    signer = NoteSigner(ORIGIN, Ed25519PrivateKey.generate())
    engine = engines()
    holder = Ledger(engines(), origin=ORIGIN, signer=signer, checkpoint_interval=3600).open()
    other = Ledger(engine, origin=ORIGIN, signer=signer, checkpoint_interval=INTERVAL).open()
    try:
        assert holder.signs_periodically
        assert not other.signs_periodically
        # An operator (or a failing disk) takes the table away; appends fail meanwhile.
        with engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE ledger_entries RENAME TO ledger_entries_away")
        try:
            with pytest.raises(StorageError):
                other.append("audit", actor="a", subject="s", body={})
            assert other.failure is not None
            time.sleep(4 * INTERVAL)  # its ticks fail too, while the table is away
            assert other.failure is not None
        finally:
            with engine.begin() as conn:
                conn.exec_driver_sql("ALTER TABLE ledger_entries_away RENAME TO ledger_entries")
        wait_for(lambda: other.failure is None)
        assert "checkpoint" not in kinds(other)  # it recovered without signing
    finally:
        other.close()
        holder.close()
