"""Shadow mode: a candidate bundle decides every new proposal again beside the active one.

It decides from what the ledger recorded for the proposal (the proposal, the executor, the
level, the figures, the clock), on a thread of its own after the live answer is given: it never
changes, delays or fails the live verdict. A disagreement (another verdict or other reason
codes) or a failure of the shadow is a row in ``gateway_shadow_disagreements``, listed by
``GET /v1/policies/shadow``. Not ledger entries: a shadow verdict is not an event of the
governed system, a candidate that disagrees with half of a million proposals must not double the
ledger, and every disagreement can be recomputed from the ledger anyway (the shadow's
``policy`` entry names its files; replaying the decisions of its window with it gives the same
rows). Which bundle is the shadow, ``gateway.lifecycle.activation`` decides.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from gateway.db.tables import SHADOW_DISAGREEMENTS
from gateway.decision.answer import Answer
from gateway.decision.redecide import Inputs, Redecision, redecide
from gateway.lifecycle.slots import Slot
from gateway.policy.active import ActivePolicy
from ledger.database import WRITE
from ledger.store import Ledger

__all__ = ["ShadowRunner", "Shadowing"]

log = logging.getLogger("mandate.policy")


@dataclass(frozen=True)
class Shadowing:
    """The shadow bundle in force in this process: its engines and its slot."""

    policy: ActivePolicy
    slot: Slot


class ShadowRunner:
    """Decides every new proposal again with the shadow bundle, on a thread of its own.

    ``offer`` (called by the decision path once the live answer is durable) only queues the
    action; a full queue drops it and counts it as skipped, so the shadow never slows the live
    path. The thread reads the proposal and decision entries back from the ledger and runs
    ``redecide`` on what they recorded: the shadow sees exactly the inputs the live decision
    had.
    """

    def __init__(self, engine: Engine, ledger: Ledger, *, capacity: int = 4096) -> None:
        self._engine = engine
        self._ledger = ledger
        self._queue: queue.Queue[tuple[Shadowing, Answer] | None] = queue.Queue(capacity)
        self._thread: threading.Thread | None = None
        self.current: Shadowing | None = None
        self.compared = 0
        self.skipped = 0
        self.disagreements = 0

    @property
    def pending(self) -> int:
        """Proposals queued for the shadow in this process."""
        return self._queue.qsize()

    def offer(self, answer: Answer) -> None:
        """Queue a fresh live decision for the shadow, if one runs. Never raises."""
        current = self.current
        if current is None:
            return
        if self._thread is None:
            self.start()
        try:
            self._queue.put_nowait((current, answer))
        except queue.Full:
            self.skipped += 1

    def start(self) -> None:
        """Start the shadow's thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="policy-shadow", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Let the thread finish what is queued, then end it."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=30)
            self._thread = None

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self.compare(*item)
            except Exception:  # the shadow must never stop; a failure is logged and counted
                log.exception("the shadow comparison failed")
            finally:
                self._queue.task_done()

    def drain(self) -> None:
        """Wait until everything queued so far is compared (tests, benches)."""
        self._queue.join()

    def compare(self, shadowing: Shadowing, answer: Answer) -> bool:
        """Decide one recorded proposal with the shadow; record a disagreement. True if they
        disagreed."""
        proposed = self._ledger.entry(answer.proposal_seq).body  # as kept: sealed values sealed
        decided = self._ledger.entry(answer.decision_seq).body
        try:
            revealed = self._ledger.reveal(answer.proposal_seq)
            shadow = redecide(shadowing.policy, Inputs.recorded(revealed, decided))
        except Exception as exc:  # the shadow's own failure is recorded, never raised
            shadow = Redecision("error", [], error=f"{type(exc).__name__}: {exc}")
        self.compared += 1
        live_codes = sorted(r["code"] for r in decided["reasons"])
        if shadow.verdict == decided["verdict"] and shadow.codes == live_codes:
            return False
        self.disagreements += 1
        proposal = proposed["proposal"]
        detail = {
            "active": {"verdict": decided["verdict"], "reasons": decided["reasons"]},
            "shadow": shadow.to_json(),
            "level": decided["trace"]["autonomy"]["level"],
            "proposal": proposal,
        }
        # A write transaction from the start (BEGIN IMMEDIATE on SQLite): it waits for the
        # ledger's writer instead of failing when a read would turn into a write.
        with self._engine.connect().execution_options(**{WRITE: True}) as conn, conn.begin():
            conn.execute(
                sa.insert(SHADOW_DISAGREEMENTS).values(
                    shadow_digest=shadowing.policy.bundle.digest,
                    active_digest=decided["trace"]["bundle_digest"],
                    action_id=answer.action_id,
                    decision_seq=answer.decision_seq,
                    decided_at=decided["trace"]["decided_at"],
                    workflow=proposal["workflow"],
                    case_type=decided["trace"]["autonomy"]["case_type"],
                    action_type=proposal["action_type"],
                    executor=proposed["executor"]["name"],
                    active_verdict=decided["verdict"],
                    shadow_verdict=shadow.verdict,
                    verdict_changed=shadow.verdict != decided["verdict"],
                    detail=orjson.dumps(detail),
                )
            )
        return True
