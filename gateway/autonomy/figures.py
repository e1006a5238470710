"""Measured figures per (workflow, case type), kept up to date as events happen.

Every decided action has one row in ``gateway_figures``, written with its decision entry; the
events that judge it set its flags in their own ledger transactions: a vote that closes its
approval (``mark_vote``), expiry (``mark_expired``), the outcome (``mark_outcome``), an audit
finding (``mark_audit``), a correction (``mark_correction``) and a failure handed to people and
their choice on it (``mark_exception``). The figures of a case type are
sums over its **window**: its latest ``decisions`` rows, decided in the last ``days`` days, at
the level in force, since that level was set (a level change starts a new window). That is one
bounded, indexed query; nothing is recomputed from the ledger.

The decision path reads the figures through ``FigureBook.cached``: a per-process cache that
lives ``ttl`` seconds, is bumped by this process's own decisions and dropped on its other
events, so several gateway processes on one database converge within ``ttl``. Whatever a
decision saw is recorded in its ledger entry (``stats``), so replay does not depend on timing.

All figures are integers; rates are basis points (``agreement_bp`` = agreements × 10000 ÷
reviewed, rounded down; 0 when nothing was reviewed).
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from gateway.db.tables import FIGURES
from ledger.entry import format_time

__all__ = [
    "COUNTS",
    "FIGURE_NAMES",
    "ZERO_FIGURES",
    "FigureBook",
    "Standing",
    "WindowSpec",
    "figures_row",
    "mark_audit",
    "mark_correction",
    "mark_exception",
    "mark_expired",
    "mark_outcome",
    "mark_vote",
    "rates",
]

COUNTS = (
    "decisions",  # decided in the window
    "holds",  # held for people
    "approvals",  # held, and approved
    "expiries",  # held, and expired without a quorum
    "reviewed",  # a person judged an execute recommendation: a vote that closed it, or an audit
    "agreements",  # ...and agreed (approved it, or found it correct)
    "overrides",  # ...and rejected what the gateway recommended executing
    "executions",  # carried out, with an outcome
    "failures",  # ...that failed
    "audits",  # audited after the fact
    "audit_findings",  # ...and found incorrect
    "corrections",  # carried out, and corrected afterwards
    "checked",  # reviewed, carried out with an outcome, or corrected (each action once)
    "errors",  # overridden, failed, found incorrect or corrected (each action once)
    "warnings",  # decided with warnings (the policy's warn rules): advisories, whatever the verdict
    "exceptions",  # a failure of it handed to people (an exception item)
    "exceptions_handled",  # ...and its latest exception retried or marked handled by them
)
RATES = ("agreement_bp", "failure_bp", "error_bp")
FIGURE_NAMES = COUNTS + RATES
ZERO_FIGURES: dict[str, int] = dict.fromkeys(FIGURE_NAMES, 0)
_BASIS = 10_000


@dataclass(frozen=True, slots=True)
class Standing:
    """A case type's level when it was changed from the bundle's initial level: since which
    ledger entry (``seq``, where its window starts) and by which event."""

    level: int
    seq: int
    event: str
    changed_at: str


def rates(counts: dict[str, int]) -> dict[str, int]:
    """The counts with their rates in basis points."""

    def ratio(part: int, whole: int) -> int:
        return part * _BASIS // whole if whole else 0

    return counts | {
        "agreement_bp": ratio(counts["agreements"], counts["reviewed"]),
        "failure_bp": ratio(counts["failures"], counts["executions"]),
        "error_bp": ratio(counts["errors"], counts["checked"]),
    }


def figures_row(
    action_id: str,
    workflow: str,
    case_type: str,
    seq: int,
    decided_at: str,
    level: int,
    verdict: str,
    recommendation: str,
    *,
    warned: bool = False,
    amount: str | None = None,
) -> dict[str, Any]:
    """The row a decision starts its action's figures with (the other flags default to 0 in
    the database: fewer parameters on the decision path). ``amount`` is the proposal's
    ``params.amount``, the case type's amount history (``gateway.decision.history``)."""
    return {
        "action_id": action_id,
        "workflow": workflow,
        "case_type": case_type,
        "seq": seq,
        "decided_at": decided_at,
        "level": level,
        "verdict": verdict,
        "recommendation": recommendation,
        "held": int(verdict == "hold"),
        "warned": int(warned),
        "amount": amount,
    }


# -- the events: each runs inside the ledger transaction of its entry -------------------------

_F = FIGURES


def _update(conn: Connection, action_id: str, **values: int) -> int:
    moved = conn.execute(sa.update(_F).where(_F.c.action_id == action_id).values(**values))
    return int(moved.rowcount)


def mark_vote(conn: Connection, action_id: str, status: str) -> None:
    """A vote closed the action's approval (``approved`` or ``rejected``). When the gateway had
    recommended executing, the people reviewed that recommendation and agreed or overrode it;
    a hold the policy asked for is an escalation, reviewed by nobody's standard but its own."""
    row = conn.execute(sa.select(_F.c.recommendation).where(_F.c.action_id == action_id)).first()
    if row is None:
        return
    approved = status == "approved"
    values = {"approved": int(approved)}
    if row.recommendation == "execute":
        values |= {"reviewed": 1, "agreed": int(approved), "overridden": int(not approved)}
    _update(conn, action_id, **values)


def mark_expired(conn: Connection, action_id: str) -> None:
    """The action's approval expired without a quorum."""
    _update(conn, action_id, expired=1)


def mark_outcome(conn: Connection, action_id: str, status: str) -> None:
    """The action was carried out: ``succeeded`` or ``failed``. A failure stays counted when
    people have it retried and the retry succeeds: it happened, and needed them."""
    if status == "failed":
        _update(conn, action_id, executed=1, failed=1)
    else:
        _update(conn, action_id, executed=1)


def mark_exception(conn: Connection, action_id: str, *, handled: bool) -> None:
    """A failure of the action was handed to people (``handled`` False), or they made their
    choice on it (True)."""
    _update(conn, action_id, excepted=1, exception_handled=int(handled))


def mark_audit(conn: Connection, action_id: str, finding: str) -> None:
    """An auditor found the executed action ``correct`` or ``incorrect``: a review of what the
    gateway let run."""
    correct = finding == "correct"
    _update(
        conn,
        action_id,
        audited=1,
        reviewed=1,
        agreed=int(correct),
        audit_incorrect=int(not correct),
    )


def mark_correction(conn: Connection, action_id: str) -> bool:
    """The executed action had to be corrected afterwards; False if it already was."""
    moved = conn.execute(
        sa.update(_F).where(_F.c.action_id == action_id, _F.c.corrected == 0).values(corrected=1)
    )
    return bool(moved.rowcount)


# -- the window -------------------------------------------------------------------------------

_ERROR = sa.case(
    (_F.c.overridden + _F.c.failed + _F.c.audit_incorrect + _F.c.corrected > 0, 1), else_=0
)
_CHECKED = sa.case((_F.c.reviewed + _F.c.executed + _F.c.corrected > 0, 1), else_=0)
_LATEST = (
    sa.select(
        _F.c.held.label("holds"),
        _F.c.approved.label("approvals"),
        _F.c.expired.label("expiries"),
        _F.c.reviewed.label("reviewed"),
        _F.c.agreed.label("agreements"),
        _F.c.overridden.label("overrides"),
        _F.c.executed.label("executions"),
        _F.c.failed.label("failures"),
        _F.c.audited.label("audits"),
        _F.c.audit_incorrect.label("audit_findings"),
        _F.c.corrected.label("corrections"),
        _CHECKED.label("checked"),
        _ERROR.label("errors"),
        _F.c.warned.label("warnings"),
        _F.c.excepted.label("exceptions"),
        _F.c.exception_handled.label("exceptions_handled"),
    )
    .where(
        _F.c.workflow == sa.bindparam("workflow"),
        _F.c.case_type == sa.bindparam("case_type"),
        _F.c.seq > sa.bindparam("since"),
        _F.c.level == sa.bindparam("level"),
        _F.c.decided_at >= sa.bindparam("cutoff"),
    )
    .order_by(_F.c.seq.desc())
    .limit(sa.bindparam("size", type_=sa.Integer))
    .subquery("window")
)
# Built once: constructing and cache-keying a select per decision costs more than running it.
_WINDOW = sa.select(
    sa.func.count().label("decisions"),
    *(sa.func.coalesce(sa.func.sum(c), 0).label(c.name) for c in _LATEST.c),
)


@dataclass(frozen=True, slots=True)
class WindowSpec:
    """Which rows a window holds: a case type's latest ``size`` decisions at ``level`` after
    ledger entry ``since``, decided at or after ``cutoff``."""

    workflow: str
    case_type: str
    level: int
    since: int
    size: int
    days: int


class FigureBook:
    """Reads the figures of a window, fresh (``window``) or through the cache (``cached``)."""

    def __init__(self, engine: Engine, *, ttl: float = 1.0) -> None:
        self._engine = engine
        self.ttl = ttl
        self._cache: dict[tuple[str, str], tuple[float, WindowSpec, dict[str, int]]] = {}

    def window(
        self, spec: WindowSpec, now: dt.datetime, conn: Connection | None = None
    ) -> dict[str, int]:
        """The figures of the window at ``now``, read from the table."""
        params = {
            "workflow": spec.workflow,
            "case_type": spec.case_type,
            "level": spec.level,
            "since": spec.since,
            "size": spec.size,
            "cutoff": format_time(now - dt.timedelta(days=spec.days)),
        }
        if conn is None:
            with self._engine.connect() as own:
                row = own.execute(_WINDOW, params).one()
        else:
            row = conn.execute(_WINDOW, params).one()
        return rates({name: int(row._mapping[name]) for name in COUNTS})

    def cached(self, spec: WindowSpec, now: dt.datetime) -> dict[str, int]:
        """The figures as this process last read them, if that was less than ``ttl`` ago for the
        same window; else read them again."""
        key = (spec.workflow, spec.case_type)
        held = self._cache.get(key)
        clock = time.monotonic()
        if held is not None and held[0] > clock and held[1] == spec:
            return dict(held[2])
        figures = self.window(spec, now)
        self._cache[key] = (clock + self.ttl, spec, figures)
        return dict(figures)

    def bump(self, workflow: str, case_type: str, verdict: str, *, warned: bool = False) -> None:
        """This process decided one more action of the case type: count it in the cached
        figures (the next read from the table corrects any drift, such as a row that left a
        full window)."""
        held = self._cache.get((workflow, case_type))
        if held is None:
            return
        expires, spec, figures = held
        figures = dict(figures)
        figures["decisions"] = min(figures["decisions"] + 1, spec.size)
        if verdict == "hold":
            figures["holds"] = min(figures["holds"] + 1, figures["decisions"])
        if warned:
            figures["warnings"] = min(figures["warnings"] + 1, figures["decisions"])
        self._cache[(workflow, case_type)] = (expires, spec, figures)

    def forget(self, workflow: str | None = None, case_type: str | None = None) -> None:
        """Drop cached figures (of one case type, or all): an event here changed them."""
        if workflow is None:
            self._cache.clear()
        else:
            self._cache.pop((workflow, case_type or ""), None)
