"""History signals: what the gateway's own tables say about a proposal (``input.history``).

Policies escalate on novelty ("high value, high risk, novel patterns, or policy exceptions"),
so a decision sees, next to its figures:

- ``first_action_type``: this executor has never proposed this action type in this workflow;
- ``first_resource``: no proposal in this workflow has named this resource;
- ``proposals_last_hour``: the executor's proposals in the hour before this one (counted up to
  ``RATE_CAP``);
- ``amounts``: the amounts (``params.amount``) of the case type's executed history, the actions
  that went ahead (executed, or approved by people), over its figures' window of decisions and
  days (at any level: a promotion does not make amounts novel): how many (``count``), their
  95th percentile (``p95``, nearest rank) and ``max``, as the decimal strings proposed (null
  when there are none).

Deterministic and replayable: the signals are recorded in the decision entry (``history``)
beside ``stats``, and replay and shadow decide with the recorded ones. Cheap: every answer that
cannot change is remembered (once an executor has proposed an action type, or a resource has
been named, that stays true), and the hourly counts and amount histories are kept for ``ttl``
seconds and bumped by this process's own decisions, as ``FigureBook`` keeps the figures; what
is left per decision is an indexed look-up of the resource when it is new.
"""

from __future__ import annotations

import bisect
import datetime as dt
import hashlib
import math
import threading
import time
from collections import OrderedDict
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from gateway.db.kept import KeptReads
from gateway.db.tables import ACTIONS, FIGURES
from ledger.entry import format_time

__all__ = ["RATE_CAP", "ZERO_HISTORY", "HistoryBook", "amount_of", "percentile", "resource_digest"]

RATE_CAP = 10_000
ZERO_HISTORY: dict[str, Any] = {
    "first_action_type": False,
    "first_resource": False,
    "proposals_last_hour": 0,
    "amounts": {"count": 0, "p95": None, "max": None},
}

_A = ACTIONS
_F = FIGURES
# Built once: constructing and cache-keying a select per decision costs more than running it.
_PROPOSED_TYPE = (
    sa.select(sa.literal(1))
    .where(
        _A.c.executor == sa.bindparam("executor"),
        _A.c.workflow == sa.bindparam("workflow"),
        _A.c.action_type == sa.bindparam("action_type"),
    )
    .limit(1)
)
_NAMED = (
    sa.select(sa.literal(1))
    .where(
        _A.c.workflow == sa.bindparam("workflow"), _A.c.resource_digest == sa.bindparam("digest")
    )
    .limit(1)
)
_RECENT = sa.select(sa.func.count()).select_from(
    sa.select(sa.literal(1))
    .where(_A.c.executor == sa.bindparam("executor"), _A.c.created_at >= sa.bindparam("since"))
    .limit(sa.bindparam("cap", type_=sa.Integer))
    .subquery("recent")
)
_AMOUNTS = (
    sa.select(_F.c.amount)
    .where(
        _F.c.workflow == sa.bindparam("workflow"),
        _F.c.case_type == sa.bindparam("case_type"),
        _F.c.decided_at >= sa.bindparam("cutoff"),
        _F.c.amount.is_not(None),
        sa.or_(_F.c.verdict == "execute", _F.c.approved == 1),
    )
    .order_by(_F.c.seq.desc())
    .limit(sa.bindparam("size", type_=sa.Integer))
)


def resource_digest(resource: str) -> str:
    """SHA-256 (hex) of a resource, as ``gateway_actions.resource_digest`` keeps it."""
    return hashlib.sha256(resource.encode()).hexdigest()


def amount_of(params: dict[str, Any]) -> str | None:
    """A proposal's amount (validated: a decimal string), or None."""
    amount = params.get("amount")
    return amount if isinstance(amount, str) else None


def percentile(ordered: list[tuple[Decimal, str]], share: int) -> str | None:
    """The nearest-rank ``share``-th percentile of amounts sorted by value, as proposed."""
    if not ordered:
        return None
    return ordered[max(math.ceil(len(ordered) * share / 100) - 1, 0)][1]


class _Amounts:
    """A case type's executed amounts, sorted by value, as read at ``expires - ttl``."""

    __slots__ = ("expires", "ordered", "size")

    def __init__(self, expires: float, size: int, amounts: list[str]) -> None:
        self.expires = expires
        self.size = size
        self.ordered = sorted((Decimal(a), a) for a in amounts)

    def summary(self) -> dict[str, Any]:
        ordered = self.ordered
        return {
            "count": len(ordered),
            "p95": percentile(ordered, 95),
            "max": ordered[-1][1] if ordered else None,
        }


class HistoryBook:
    """Computes ``input.history`` from the gateway's tables, through caches (module docstring).

    ``capacity`` bounds the remembered facts (executor and action type pairs, resources);
    ``ttl`` is how long hourly counts and amount histories are kept before being read again.
    """

    def __init__(self, engine: Engine, *, ttl: float = 1.0, capacity: int = 100_000) -> None:
        self._reads = KeptReads(engine)
        self._proposed_type, self._named, self._recent, self._amounts_read = (
            self._reads.prepare(statement)
            for statement in (_PROPOSED_TYPE, _NAMED, _RECENT, _AMOUNTS)
        )
        self.ttl = ttl
        self._capacity = capacity
        self._seen: OrderedDict[tuple[str, ...], None] = OrderedDict()
        self._rates: dict[str, tuple[float, int]] = {}
        self._amounts: dict[tuple[str, str], _Amounts] = {}
        self._lock = threading.Lock()  # decisions run on several threads (replays, shadows)

    def signals(
        self,
        executor: str,
        proposal: dict[str, Any],
        case_type: str,
        window: tuple[int, int],
        moment: dt.datetime,
    ) -> dict[str, Any]:
        """The history a decision of ``proposal`` by ``executor`` at ``moment`` sees; ``window``
        is the case type's figures' window: (decisions, days)."""
        workflow = proposal["workflow"]
        kind = ("type", executor, workflow, proposal["action_type"])
        named = ("resource", workflow, resource_digest(proposal["resource"]))
        clock = time.monotonic()
        with self._lock:
            known = {key: key in self._seen for key in (kind, named)}
            rate = self._rates.get(executor)
            amounts = self._amounts.get((workflow, case_type))
        stale_rate = rate is None or rate[0] <= clock
        stale_amounts = amounts is None or amounts.expires <= clock or amounts.size != window[0]
        rows = self._reads.rows
        if not known[kind]:
            given = {"executor": executor, "workflow": workflow, "action_type": kind[3]}
            known[kind] = bool(rows(self._proposed_type, given))
        if not known[named]:
            known[named] = bool(rows(self._named, {"workflow": workflow, "digest": named[2]}))
        if stale_rate:
            since = format_time(moment - dt.timedelta(hours=1))
            counted = rows(self._recent, {"executor": executor, "since": since, "cap": RATE_CAP})
            rate = (clock + self.ttl, int(counted[0][0]))
        if stale_amounts:
            given = {
                "workflow": workflow,
                "case_type": case_type,
                "cutoff": format_time(moment - dt.timedelta(days=window[1])),
                "size": window[0],
            }
            found = rows(self._amounts_read, given)
            amounts = _Amounts(clock + self.ttl, window[0], [row[0] for row in found])
        assert rate is not None
        assert amounts is not None
        with self._lock:
            for key, seen in known.items():
                if seen:
                    self._remember(key)
            self._rates[executor] = rate
            self._amounts[(workflow, case_type)] = amounts
            summary = amounts.summary()
        return {
            "first_action_type": not known[kind],
            "first_resource": not known[named],
            "proposals_last_hour": rate[1],
            "amounts": summary,
        }

    def decided(
        self, executor: str, proposal: dict[str, Any], case_type: str, verdict: str
    ) -> None:
        """This process recorded a decision: what it proposed is no longer new, the executor's
        hour has one more proposal, and an amount that went ahead joins the case type's."""
        workflow = proposal["workflow"]
        with self._lock:
            self._remember(("type", executor, workflow, proposal["action_type"]))
            self._remember(("resource", workflow, resource_digest(proposal["resource"])))
            rate = self._rates.get(executor)
            if rate is not None:
                self._rates[executor] = (rate[0], min(rate[1] + 1, RATE_CAP))
            amount = amount_of(proposal.get("params") or {})
            held = self._amounts.get((workflow, case_type))
            if verdict == "execute" and amount is not None and held is not None:
                bisect.insort(held.ordered, (Decimal(amount), amount))

    def close(self) -> None:
        """Close the connections the reads opened."""
        self._reads.close()

    def forget(self) -> None:
        """Read hourly counts and amounts from the tables next time."""
        with self._lock:
            self._rates.clear()
            self._amounts.clear()

    def _remember(self, key: tuple[str, ...]) -> None:
        seen = self._seen
        seen[key] = None
        seen.move_to_end(key)
        if len(seen) > self._capacity:
            seen.popitem(last=False)
