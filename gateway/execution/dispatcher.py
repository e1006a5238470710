"""Dispatch: carry out allowed actions exactly once, from an outbox that survives a crash.

An ``execute`` verdict (directly, or when an approval reaches quorum) writes an execution
intent in the same transaction as its ledger entry. The dispatcher claims due intents with a
lease, writes an ``execution`` entry, makes one attempt through the adapter, and records what
happened: an ``outcome`` entry, or an ``execution`` entry scheduling a retry with exponential
backoff and jitter. A process that dies mid-attempt leaves a lease that expires; whoever claims
the intent next repeats the attempt with the same ``Idempotency-Key`` (the action id), so the
receiver carries the action out once.

An action whose personal data was erased before it was carried out (its data subject asked,
``gateway.decision.erasure``) is not sent at all: the receiver would get an action about someone
without the data to act on, and the erasure is meant to end the processing of their data. The
dispatcher records a ``failed`` outcome that names the erasure instead, which does not count
against the case type's figures (nothing was carried out).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from adapters.base import Adapter, Dispatch, DispatchResult
from gateway.db.tables import ACTIONS, EVENTS, INTENTS
from gateway.decision.personal import erased_fields
from gateway.execution.exceptions import attempts_of
from gateway.execution.outcomes import event_row, record_outcome
from ledger.database import WRITE
from ledger.entry import format_time
from ledger.models import SEALED
from ledger.store import Appended, Ledger, Record

__all__ = ["Dispatcher", "ErasedBeforeDispatch", "payload_for"]

log = logging.getLogger("mandate.dispatch")


class ErasedBeforeDispatch(Exception):
    """The action's personal data was erased before it was carried out: nothing is sent."""


def _parse_time(stamp: str) -> dt.datetime:
    """The datetime of a ``format_time`` stamp."""
    return dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)


class Dispatcher:
    """Works the outbox: one per gateway process; several processes share it safely."""

    def __init__(
        self,
        engine: Engine,
        ledger: Ledger,
        adapters: Mapping[str, Adapter],
        *,
        payload: Callable[[str], dict[str, Any]],
        attempts: int = 6,
        backoff: float = 0.5,
        lease: float = 30.0,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        concurrency: int = 16,
        on_outcome: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        """``on_outcome`` is awaited with the action id after each outcome this dispatcher
        records (the autonomy review)."""
        self._engine = engine
        self._ledger = ledger
        self._adapters = adapters
        self._payload = payload
        self._attempts = attempts
        self._backoff = backoff
        self._lease = lease
        self._clock = clock
        self._slots = asyncio.Semaphore(concurrency)
        self._wake = asyncio.Event()
        self._stopping = False
        self._random = random.Random()  # noqa: S311 - jitter, not secrecy
        self._next_due: dt.datetime | None = None
        self._on_outcome = on_outcome

    @property
    def adapters(self) -> Mapping[str, Adapter]:
        """The adapters it carries actions out through, by name (the runtime closes them)."""
        return self._adapters

    def wake(self) -> None:
        """New intents are due: look now rather than at the next tick."""
        self._wake.set()

    def stop(self) -> None:
        """Finish the attempts in flight and return from ``run``."""
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        """Claim and dispatch due intents until stopped."""
        running: set[asyncio.Task[None]] = set()
        while not self._stopping:
            self._wake.clear()
            try:
                claimed = await asyncio.to_thread(self._claim)
            except Exception:
                log.exception("could not read the outbox; trying again shortly")
                claimed = []
            for intent in claimed:
                task = asyncio.create_task(self._attempt(intent))
                running.add(task)
                task.add_done_callback(running.discard)
            if not claimed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self._idle_wait())
        if running:
            await asyncio.gather(*running, return_exceptions=True)

    def _idle_wait(self) -> float:
        """Until the next retry is due, looking at least every second for other processes'
        intents and for leases that ran out."""
        wait = min(1.0, self._lease / 4)
        if self._next_due is not None:
            wait = min(wait, (self._next_due - self._clock()).total_seconds())
        return max(0.005, wait)

    def _claim(self, limit: int = 64) -> list[dict[str, Any]]:
        """Take due intents with a lease; a conditional update makes each claim exclusive."""
        now = self._clock()
        stamp = format_time(now)
        lease = format_time(now + dt.timedelta(seconds=self._lease))
        due = sa.or_(
            sa.and_(INTENTS.c.status == "pending", INTENTS.c.next_attempt_at <= stamp),
            sa.and_(INTENTS.c.status == "dispatching", INTENTS.c.lease_until < stamp),
        )
        claimed: list[dict[str, Any]] = []
        # A write transaction from the start (BEGIN IMMEDIATE on SQLite): a read that turned
        # into a write would fail at once if another process wrote in between.
        with self._engine.connect().execution_options(**{WRITE: True}) as conn, conn.begin():
            candidates = conn.execute(
                sa.select(INTENTS).where(due).order_by(INTENTS.c.next_attempt_at).limit(limit)
            ).all()
            for row in candidates:
                taken = conn.execute(
                    sa.update(INTENTS)
                    .where(INTENTS.c.action_id == row.action_id, due)
                    .values(
                        status="dispatching",
                        lease_until=lease,
                        attempts=row.attempts + 1,
                        updated_at=stamp,
                    )
                )
                if taken.rowcount == 1:
                    claimed.append(
                        dict(row._mapping) | {"attempts": row.attempts + 1, "lease_until": lease}
                    )
            upcoming = conn.execute(
                sa.select(sa.func.min(INTENTS.c.next_attempt_at)).where(
                    INTENTS.c.status == "pending", INTENTS.c.next_attempt_at > stamp
                )
            ).scalar()
        self._next_due = _parse_time(upcoming) if upcoming else None
        for intent in claimed:
            try:
                intent["payload"] = self._payload(intent["action_id"])
            except ErasedBeforeDispatch as exc:
                intent["payload"], intent["erased"] = None, str(exc)
        return claimed

    async def _attempt(self, intent: dict[str, Any]) -> None:
        async with self._slots:
            try:
                await self._attempt_once(intent)
            except Exception:
                # The lease runs out and the attempt is made again; nothing is lost.
                log.exception("dispatch of %s failed before its result was recorded", intent)

    async def _attempt_once(self, intent: dict[str, Any]) -> None:
        action_id, attempt = intent["action_id"], intent["attempts"]
        if intent.get("erased"):
            await self._refuse(action_id, intent["erased"])
            return
        adapter = self._adapters.get(intent["adapter"])
        body = {
            "action_id": action_id,
            "attempt": attempt,
            "adapter": intent["adapter"],
            "target": intent["target"],
            "result": "dispatching",
        }
        lease = intent["lease_until"]
        proposal_seq = intent["payload"]["proposal_seq"]

        def still_ours(conn: Connection, appended: list[Appended]) -> None:
            # The claim may have run out and been taken over, or the executor may have
            # reported already: then this attempt is not made, and no entry says it was.
            held = conn.execute(
                sa.select(INTENTS.c.action_id).where(
                    INTENTS.c.action_id == action_id,
                    INTENTS.c.status == "dispatching",
                    INTENTS.c.lease_until == lease,
                )
            ).first()
            if held is None:
                raise LookupError(f"the claim on {action_id} is no longer ours")
            # Erased since the payload was read: under the ledger's lock, as erasures are, so
            # the ledger shows this attempt either before the erasure or not at all.
            erased_by = conn.execute(_ERASED_BY, {"seq": proposal_seq}).scalar()
            if erased_by is not None:
                raise ErasedBeforeDispatch(_not_sent(f"erasure entry {erased_by}"))
            entry = appended[0]
            conn.execute(
                sa.insert(EVENTS).values(event_row(entry.seq, action_id, "execution", entry.time))
            )

        try:
            await self._ledger.append_many_async(
                [Record("execution", "mandate", action_id, body)], in_transaction=still_ours
            )
        except LookupError:
            return
        except ErasedBeforeDispatch as exc:
            await self._refuse(action_id, str(exc))
            return
        if adapter is None:
            result = DispatchResult("failed", f"no adapter named {intent['adapter']!r}")
        else:
            dispatch = Dispatch(action_id, attempt, intent["target"], intent["payload"])
            try:
                result = await adapter.dispatch(dispatch)
            except Exception as exc:
                result = DispatchResult("retry", f"the adapter raised {type(exc).__name__}: {exc}")
        await self._settle(action_id, attempt, result)

    async def _settle(self, action_id: str, attempt: int, result: DispatchResult) -> None:
        if result.status == "retry" and attempt < self._attempts:
            await self._schedule_retry(action_id, attempt, result)
            return
        if result.status == "awaiting_outcome":
            await self._park(action_id, attempt)
            return
        status = "succeeded" if result.status == "succeeded" else "failed"
        detail = {"detail": result.detail, "http_status": result.http_status}
        if result.status == "retry":
            detail["detail"] = f"gave up after {attempt} attempts: {result.detail}"
        tried = None
        if status == "failed":  # handed to people with every attempt's error
            earlier = await asyncio.to_thread(attempts_of, self._ledger, self._engine, action_id)
            tried = [*earlier, {"attempt": attempt, "error": result.detail}]
        try:
            await record_outcome(
                self._ledger,
                action_id,
                actor="mandate",
                status=status,
                detail=detail,
                attempt=attempt,
                expect=("dispatching",),
                attempts=tried,
            )
        except LookupError:  # another process settled it first
            return
        if self._on_outcome is not None:
            await self._on_outcome(action_id)

    async def _refuse(self, action_id: str, why: str) -> None:
        """Settle an action that is not carried out because its personal data was erased."""
        try:
            await record_outcome(
                self._ledger,
                action_id,
                actor="mandate",
                status="failed",
                detail={"detail": why, "http_status": None, "erased": True},
                attempt=None,
                expect=("dispatching",),
                carried_out=False,
            )
        except LookupError:  # another process settled it first
            return

    async def _schedule_retry(self, action_id: str, attempt: int, result: DispatchResult) -> None:
        delay = min(60.0, self._backoff * 2 ** (attempt - 1)) * (0.5 + self._random.random())
        retry_at = format_time(self._clock() + dt.timedelta(seconds=delay))
        body = {
            "action_id": action_id,
            "attempt": attempt,
            "result": "retry",
            "error": result.detail,
            "next_attempt_at": retry_at,
        }

        def reschedule(conn: Connection, appended: list[Appended]) -> None:
            entry = appended[0]
            conn.execute(
                sa.update(INTENTS)
                .where(INTENTS.c.action_id == action_id, INTENTS.c.status == "dispatching")
                .values(
                    status="pending",
                    next_attempt_at=retry_at,
                    lease_until=None,
                    last_error=result.detail[:500],
                    updated_at=entry.time,
                )
            )
            conn.execute(
                sa.insert(EVENTS).values(event_row(entry.seq, action_id, "execution", entry.time))
            )

        await self._ledger.append_many_async(
            [Record("execution", "mandate", action_id, body)], in_transaction=reschedule
        )
        self.wake()

    async def _park(self, action_id: str, attempt: int) -> None:
        def park(conn: Connection) -> None:
            conn.execute(
                sa.update(INTENTS)
                .where(INTENTS.c.action_id == action_id, INTENTS.c.status == "dispatching")
                .values(status="awaiting_outcome", lease_until=None)
            )

        await asyncio.to_thread(self._in_transaction, park)

    def _in_transaction(self, work: Callable[[Connection], None]) -> None:
        with self._engine.begin() as conn:
            work(conn)


def payload_for(engine: Engine, ledger: Ledger, action_id: str) -> dict[str, Any]:
    """What a webhook receives: the proposal (its sealed values put back), the case type the
    bundle decided it as, and the ids of its proposal and decision. ErasedBeforeDispatch if its
    personal data was erased."""
    with engine.connect() as conn:
        row = conn.execute(sa.select(ACTIONS).where(ACTIONS.c.id == action_id)).one()
    entry = ledger.entry(row.proposal_seq).body
    if "sealed" in entry:
        entry = ledger.reveal(row.proposal_seq)
    proposal = entry["proposal"]
    erased = erased_fields(proposal)
    if erased:
        by = f"erasure entry {max(erased.values())} ({', '.join(sorted(erased))})"
        raise ErasedBeforeDispatch(_not_sent(by))
    return {
        "action_id": action_id,
        "proposal_seq": row.proposal_seq,
        "decision_seq": row.decision_seq,
        "executor": row.executor,
        "workflow": proposal["workflow"],
        "action_type": proposal["action_type"],
        "case_type": row.case_type,
        "resource": proposal["resource"],
        "params": proposal["params"],
    }


def _not_sent(by: str) -> str:
    return f"not carried out: its personal data was erased by {by} first; nothing was sent"


# The erasure entry that erased a value sealed in a proposal entry, if one did.
_ERASED_BY = (
    sa.select(SEALED.c.erased_by)
    .where(SEALED.c.seq == sa.bindparam("seq"), SEALED.c.erased_by.is_not(None))
    .limit(1)
)
