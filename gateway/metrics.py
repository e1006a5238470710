"""Prometheus metrics of one gateway process: what an operator alerts on.

Two kinds, by where the truth is. Counters of what this process did are incremented where it
happens (a decision, a fail-closed answer): cheap, one increment on the hot path. What the
database holds for every process alike (approvals waiting, the dispatch queue, audits, levels,
the ledger) is read from it at each scrape by ``DatabaseState``, so every process reports the
same numbers and none drifts after a restart. Each series carries the ``workflow`` and the
``case_type`` where it has one; the names and labels are listed in docs/OPERATING.md.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from sqlalchemy.engine import Engine

from gateway.db.tables import ACTIONS, APPROVALS, AUDITS, AUTONOMY_CHANGES, INTENTS
from gateway.decision.answer import DecisionMade
from gateway.policy.bundle import Bundle
from ledger.store import Ledger

__all__ = ["DatabaseState", "Metrics"]

log = logging.getLogger("mandate")

_CASE = ("workflow", "case_type")
# Intent statuses (gateway.execution.dispatcher) of webhook attempts still to be made.
_QUEUED = ("pending", "dispatching")
_OUTCOMES = ("succeeded", "failed")


class Metrics:
    """This process's registry: its event counters, and the state read at each scrape."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.decisions = Counter(
            "mandate_decisions",
            "Decisions answered, by workflow, case type and verdict.",
            [*_CASE, "verdict"],
            registry=self.registry,
        )
        self.reasons = Counter(
            "mandate_decision_reasons",
            "Reason codes of the decisions answered (one per code a verdict carries).",
            [*_CASE, "verdict", "reason"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "mandate_decision_seconds",
            "Time from a proposal's arrival to its durable verdict.",
            _CASE,
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=self.registry,
        )
        self.failures = Counter(
            "mandate_fail_closed",
            "Requests answered 503 because a part they depend on failed (nothing was decided "
            "or executed), by cause: casbin, rego, policy, ledger, database.",
            ["cause"],
            registry=self.registry,
        )
        # Each (workflow, case type, verdict)'s counter and histogram, looked up once: the
        # labels are the bundle's, so there are few.
        self._children: dict[tuple[str, str, str], tuple[Counter, Histogram]] = {}

    def decided(self, made: DecisionMade) -> None:
        """Count a fresh decision. The labels are the bundle's (the workflow is validated, the
        case type classified), never a proposer's free text."""
        workflow, case_type, verdict = made.workflow, made.case_type, made.answer.verdict
        key = (workflow, case_type, verdict)
        children = self._children.get(key)
        if children is None:
            children = (self.decisions.labels(*key), self.latency.labels(workflow, case_type))
            self._children[key] = children
        children[0].inc()
        for code in made.reason_codes:
            self.reasons.labels(workflow, case_type, verdict, code).inc()
        children[1].observe(made.seconds)

    def failed_closed(self, cause: str) -> None:
        """Count a request refused with a 503 because ``cause`` failed."""
        self.failures.labels(cause).inc()

    def follow(self, state: DatabaseState) -> None:
        """Report what ``state`` reads at each scrape."""
        self.registry.register(state)

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)


@dataclass(frozen=True)
class DatabaseState:
    """The gauges (and totals) read at each scrape from the database every process shares,
    and from this process's ledger writer. When the database cannot be read, its families are
    left out and ``mandate_database_up`` is 0: the counters above still answer."""

    engine: Engine
    ledger: Ledger
    bundle: Callable[[], Bundle]
    levels: Callable[[], dict[tuple[str, str], int]]
    clock: Callable[[], dt.datetime]

    def describe(self) -> list[Metric]:
        # Known only by reading: nothing to check against other collectors' names.
        return []

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "mandate_database_up", "1 when this scrape could read the gateway's database."
        )
        try:
            families = [*self._approvals(), *self._dispatch(), *self._autonomy(), *self._ledger()]
        except Exception as exc:  # whatever stops the read, the counters still answer
            log.warning("metrics: the database cannot be read: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families
        yield self._signer()

    def _approvals(self) -> list[Metric]:
        pending = _gauge(
            "mandate_approvals_pending", "Held actions waiting for people (approvals pending)."
        )
        oldest = _gauge(
            "mandate_approvals_pending_oldest_seconds",
            "Age of the oldest pending approval, in seconds.",
        )
        expired = CounterMetricFamily(
            "mandate_approvals_expired",
            "Approvals that expired unanswered (their actions never execute).",
            labels=_CASE,
        )
        audits = _gauge("mandate_audits_pending", "Sampled decisions waiting for an auditor.")
        now = self.clock()
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(
                    APPROVALS.c.workflow,
                    APPROVALS.c.case_type,
                    APPROVALS.c.status,
                    sa.func.count(),
                    sa.func.min(APPROVALS.c.created_at),
                )
                .where(APPROVALS.c.status.in_(("pending", "expired")))
                .group_by(APPROVALS.c.workflow, APPROVALS.c.case_type, APPROVALS.c.status)
            ).all()
            audited = conn.execute(
                sa.select(AUDITS.c.workflow, AUDITS.c.case_type, sa.func.count())
                .where(AUDITS.c.status == "pending")
                .group_by(AUDITS.c.workflow, AUDITS.c.case_type)
            ).all()
        for workflow, case_type, status, count, first in rows:
            if status == "expired":
                expired.add_metric([workflow, case_type], count)
                continue
            pending.add_metric([workflow, case_type], count)
            age = now - dt.datetime.fromisoformat(first)
            oldest.add_metric([workflow, case_type], max(age.total_seconds(), 0.0))
        for workflow, case_type, count in audited:
            audits.add_metric([workflow, case_type], count)
        return [pending, oldest, expired, audits]

    def _dispatch(self) -> list[Metric]:
        queue = _gauge(
            "mandate_dispatch_queue", "Allowed actions whose webhook delivery is still to be made."
        )
        retries = CounterMetricFamily(
            "mandate_dispatch_retries", "Webhook attempts beyond each action's first.", labels=_CASE
        )
        outcomes = CounterMetricFamily(
            "mandate_outcomes",
            "Allowed actions that ended, by status: succeeded or failed (webhook or callback).",
            labels=[*_CASE, "status"],
        )
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(
                    ACTIONS.c.workflow,
                    ACTIONS.c.case_type,
                    INTENTS.c.status,
                    sa.func.count(),
                    sa.func.sum(sa.case((INTENTS.c.attempts > 1, INTENTS.c.attempts - 1), else_=0)),
                )
                .join(ACTIONS, ACTIONS.c.id == INTENTS.c.action_id)
                .group_by(ACTIONS.c.workflow, ACTIONS.c.case_type, INTENTS.c.status)
            ).all()
        queued: dict[tuple[str, str], int] = {}
        retried: dict[tuple[str, str], int] = {}
        for workflow, case_type, status, count, extra in rows:
            key = (workflow, case_type)
            retried[key] = retried.get(key, 0) + int(extra or 0)
            if status in _QUEUED:
                queued[key] = queued.get(key, 0) + count
            elif status in _OUTCOMES:
                outcomes.add_metric([workflow, case_type, status], count)
        for key, count in queued.items():
            queue.add_metric(list(key), count)
        for key, count in retried.items():
            retries.add_metric(list(key), count)
        return [queue, retries, outcomes]

    def _autonomy(self) -> list[Metric]:
        level = _gauge(
            "mandate_autonomy_level",
            "Each case type's autonomy level in force: 1 advisory, 2 supervised, 3 conditional, "
            "4 full.",
        )
        changes = CounterMetricFamily(
            "mandate_autonomy_changes",
            "Changes of level, by event: promotion (approved by governors), demotion "
            "(automatic), set (by hand).",
            labels=[*_CASE, "event"],
        )
        bundle = self.bundle()
        standing = self.levels()
        for workflow, config in sorted(bundle.workflows.items()):
            for case_type in sorted(config.case_types):
                known = standing.get((workflow, case_type))
                shown = config.initial_level(case_type) if known is None else known
                level.add_metric([workflow, case_type], shown)
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(
                    AUTONOMY_CHANGES.c.workflow,
                    AUTONOMY_CHANGES.c.case_type,
                    AUTONOMY_CHANGES.c.event,
                    sa.func.count(),
                ).group_by(
                    AUTONOMY_CHANGES.c.workflow,
                    AUTONOMY_CHANGES.c.case_type,
                    AUTONOMY_CHANGES.c.event,
                )
            ).all()
        for workflow, case_type, event, count in rows:
            changes.add_metric([workflow, case_type, event], count)
        return [level, changes]

    def _ledger(self) -> list[Metric]:
        entries = self.ledger.size()
        size = GaugeMetricFamily("mandate_ledger_entries", "Entries in the ledger.")
        size.add_metric([], entries)
        age = GaugeMetricFamily(
            "mandate_ledger_checkpoint_age_seconds",
            "Seconds since the latest signed checkpoint was recorded (absent before the first).",
        )
        # An idle ledger signs nothing new, so the age alone grows without anything being
        # wrong: what is at stake is the entries no checkpoint covers yet.
        unsigned = GaugeMetricFamily(
            "mandate_ledger_unsigned_entries",
            "Entries after the latest signed checkpoint, which no checkpoint covers yet.",
        )
        latest = self.ledger.latest_checkpoint()
        if latest is None:
            unsigned.add_metric([], entries)
        else:
            signed = dt.datetime.fromisoformat(self.ledger.entry(latest.seq).time)
            age.add_metric([], max((self.clock() - signed).total_seconds(), 0.0))
            # The checkpoint entry itself follows the entries it covers.
            unsigned.add_metric([], max(entries - latest.size - 1, 0))
        return [size, age, unsigned]

    def _signer(self) -> Metric:
        held = GaugeMetricFamily(
            "mandate_ledger_signer",
            "1 while this process holds the signer lease (signs the periodic checkpoints); "
            "summed over processes, exactly 1 is healthy.",
        )
        held.add_metric([], 1 if self.ledger.signs_periodically else 0)
        return held


def _gauge(name: str, documentation: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=_CASE)
