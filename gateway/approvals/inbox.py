"""The inbox at volume: one page of approvals with its filters, free-text search, sort, and
counts per filter value, all in SQL (SQLite and PostgreSQL alike).

A filter narrows every count but its own: the counts of workflows say how many approvals each
workflow would show with the other filters kept. Who sees which approvals is decided by the
caller (``Approvals.page``) and arrives here as one more condition.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

import sqlalchemy as sa
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from gateway.db.tables import APPROVALS
from ledger.entry import format_time

__all__ = [
    "AGES",
    "FACETS",
    "PAGE_SIZE",
    "STATUSES",
    "InboxPage",
    "InboxQuery",
    "read_page",
]

PAGE_SIZE = 50
STATUSES = ("pending", "approved", "rejected", "expired", "superseded", "withdrawn", "all")
# How long ago an approval was held: each bucket's bounds, at least and less than (None: none).
AGES: dict[str, tuple[dt.timedelta | None, dt.timedelta | None]] = {
    "hour": (None, dt.timedelta(hours=1)),
    "day": (dt.timedelta(hours=1), dt.timedelta(days=1)),
    "week": (dt.timedelta(days=1), dt.timedelta(days=7)),
    "older": (dt.timedelta(days=7), None),
}
FACETS = ("workflow", "case_type", "reason", "executor", "age")
# The facets counted from one grouped query (``_count``); age is counted apart.
_COMBINED = ("workflow", "case_type", "reason", "executor")
# Values a facet lists, most approvals first; the one selected is listed even if not among them.
_FACET_VALUES = 30


def _blank_is_none(value: Any) -> Any:
    """A form's empty choice ("any") is no filter."""
    return None if value == "" else value


_Name = Annotated[
    Annotated[str, StringConstraints(min_length=1, max_length=128)] | None,
    BeforeValidator(_blank_is_none),
]


class InboxQuery(BaseModel):
    """The inbox's query string: what to show, and which page of it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    status: Literal[
        "pending", "approved", "rejected", "expired", "superseded", "withdrawn", "all"
    ] = "pending"
    workflow: _Name = None
    case_type: _Name = None
    reason: _Name = None
    executor: _Name = None
    age: Annotated[
        Literal["hour", "day", "week", "older"] | None, BeforeValidator(_blank_is_none)
    ] = None
    q: Annotated[
        Annotated[str, StringConstraints(max_length=200)] | None, BeforeValidator(_blank_is_none)
    ] = None
    sort: Literal["newest", "expiry"] = "newest"
    page: int = Field(default=1, ge=1, le=1_000_000)

    @property
    def filtered(self) -> bool:
        """Whether any filter or search narrows the status's approvals."""
        return bool((self.q or "").strip()) or any(getattr(self, f) is not None for f in FACETS)

    def cleared(self) -> str:
        """The query string of this status with no filter, search or sort."""
        return self.link(**dict.fromkeys((*FACETS, "q")), sort="newest")

    def link(self, **changes: Any) -> str:
        """The query string of this view with ``changes`` (None drops a filter); a change of
        filter starts again at page 1."""
        values = self.model_dump() | {"page": 1} | changes
        defaults = InboxQuery().model_dump()
        kept = {k: v for k, v in values.items() if v is not None and v != defaults[k]}
        return "?" + urlencode(kept)


@dataclass
class InboxPage:
    """One page of approval rows, how many match, and the counts of each facet's values."""

    query: InboxQuery
    rows: list[Any]
    total: int
    page: int
    pages: int
    facets: dict[str, list[tuple[str, int]]] = field(default_factory=dict)


def _conditions(
    query: InboxQuery, now: dt.datetime, dialect: str
) -> dict[str, ColumnElement[bool]]:
    """Each filter of ``query`` as a condition on ``gateway_approvals``, by facet name."""
    a = APPROVALS.c
    conditions: dict[str, ColumnElement[bool]] = {}
    if query.status != "all":
        conditions["status"] = a.status == query.status
    if query.workflow is not None:
        conditions["workflow"] = a.workflow == query.workflow
    if query.case_type is not None:
        conditions["case_type"] = a.case_type == query.case_type
    if query.executor is not None:
        conditions["executor"] = a.executor == query.executor
    if query.reason is not None:
        conditions["reason"] = a.reason_codes.contains(f" {query.reason} ", autoescape=True)
    if query.age is not None:
        conditions["age"] = _age(query.age, now)
    term = (query.q or "").strip()
    if term:
        columns = (a.action_type, a.resource, a.executor)
        if dialect == "sqlite":
            # SQLite's LIKE already ignores ASCII case, and its lower() folds nothing more;
            # SQLAlchemy's icontains would call lower() on each column of every row.
            conditions["q"] = sa.or_(*(c.contains(term, autoescape=True) for c in columns))
        else:
            conditions["q"] = sa.or_(*(c.icontains(term, autoescape=True) for c in columns))
    return conditions


def _age(bucket: str, now: dt.datetime) -> ColumnElement[bool]:
    """Held within the bucket's bounds: entry times compare as strings (``format_time``)."""
    least, most = AGES[bucket]
    parts = []
    if least is not None:
        parts.append(APPROVALS.c.created_at <= format_time(now - least))
    if most is not None:
        parts.append(APPROVALS.c.created_at > format_time(now - most))
    return sa.and_(*parts)


def read_page(
    conn: Connection, query: InboxQuery, seen: ColumnElement[bool], now: dt.datetime
) -> InboxPage:
    """The page ``query`` asks for among the approvals ``seen`` lets the caller see, with the
    counts per filter value; a page past the last is the last.

    Three queries: the counts (``_count``: one grouped pass over an index that holds the
    columns it reads, and one for the ages), then the page's ids, then their rows.
    """
    conditions = _conditions(query, now, conn.dialect.name)
    total, facets = _count(conn, query, seen, conditions, now)
    pages = max(1, -(-total // PAGE_SIZE))
    page = min(query.page, pages)
    a = APPROVALS.c
    # Both keys one way, as the indexes hold them, so that no sort is needed.
    order = (
        (a.expires_at.asc(), a.id.asc())
        if query.sort == "expiry"
        else (a.created_at.desc(), a.id.desc())
    )
    # The page's ids first, from the indexes alone (a deep page skips index entries, not rows),
    # then their rows.
    ids = (
        sa.select(a.id)
        .where(seen, *conditions.values())
        .order_by(*order)
        .limit(PAGE_SIZE)
        .offset((page - 1) * PAGE_SIZE)
        .scalar_subquery()
    )
    rows = conn.execute(sa.select(APPROVALS).where(a.id.in_(ids)).order_by(*order)).all()
    return InboxPage(
        query=query, rows=list(rows), total=total, page=page, pages=pages, facets=facets
    )


def _count(
    conn: Connection,
    query: InboxQuery,
    seen: ColumnElement[bool],
    conditions: dict[str, ColumnElement[bool]],
    now: dt.datetime,
) -> tuple[int, dict[str, list[tuple[str, int]]]]:
    """How many approvals match, and each facet's values with how many approvals each would
    show with the facet's own filter left out and the others kept.

    The approvals are counted by workflow, action type, case type, executor and reason codes
    together, in the order of the index that holds them (so no sort), and each facet summed
    from those combinations here; the ages are counted apart, by SQL.
    """
    a = APPROVALS.c
    columns = [a.workflow, a.action_type, a.case_type, a.executor, a.reason_codes]
    kept = [seen, *(c for name, c in conditions.items() if name not in _COMBINED)]
    combinations = conn.execute(
        sa.select(*columns, sa.func.count()).where(*kept).group_by(*columns)
    ).all()
    selected = {facet: getattr(query, facet) for facet in _COMBINED}
    tallies: dict[str, Counter[str]] = {facet: Counter() for facet in _COMBINED}
    total = 0
    for found in combinations:
        number = int(found[-1])
        values = {
            "workflow": (found.workflow,),
            "case_type": (found.case_type,),
            "executor": (found.executor,),
            "reason": str(found.reason_codes).split(),
        }
        passes = {f: selected[f] is None or selected[f] in values[f] for f in _COMBINED}
        failed = [f for f, ok in passes.items() if not ok]
        if not failed:
            total += number
        # a facet counts the combinations every other filter lets through
        for facet in _COMBINED if not failed else failed[:1] if len(failed) == 1 else ():
            for value in values[facet]:
                tallies[facet][value] += number
    facets = {
        facet: _with_selected(tallies[facet].most_common(_FACET_VALUES), selected[facet])
        for facet in _COMBINED
    }
    others = [seen, *(c for name, c in conditions.items() if name != "age")]
    sums = [sa.func.sum(sa.case((_age(name, now), 1), else_=0)) for name in AGES]
    ages = conn.execute(sa.select(*sums).select_from(APPROVALS).where(*others)).one()
    facets["age"] = [(name, int(n or 0)) for name, n in zip(AGES, ages, strict=True)]
    return total, facets


def _with_selected(found: list[tuple[str, int]], selected: str | None) -> list[tuple[str, int]]:
    if selected is None or any(value == selected for value, _ in found):
        return found
    return [*found, (selected, 0)]
