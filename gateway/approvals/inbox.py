"""The inbox at volume: one page of approvals with its filters, free-text search, sort, and
counts per filter value, all in SQL (SQLite and PostgreSQL alike).

A filter narrows every count but its own: the counts of workflows say how many approvals each
workflow would show with the other filters kept. Who sees which approvals is decided by the
caller (``Approvals.page``) and arrives here as one more condition.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

import sqlalchemy as sa
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from gateway.db.tables import APPROVAL_REASONS, APPROVALS
from ledger.entry import format_time

__all__ = [
    "AGES",
    "FACETS",
    "PAGE_SIZE",
    "STATUSES",
    "InboxPage",
    "InboxQuery",
    "count_facets",
    "select_page",
]

PAGE_SIZE = 50
STATUSES = ("pending", "approved", "rejected", "expired", "superseded", "withdrawn", "all")
# How long ago an approval was held: the upper bound of each bucket (None: no bound).
AGES: dict[str, tuple[dt.timedelta | None, dt.timedelta | None]] = {
    "hour": (None, dt.timedelta(hours=1)),
    "day": (dt.timedelta(hours=1), dt.timedelta(days=1)),
    "week": (dt.timedelta(days=1), dt.timedelta(days=7)),
    "older": (dt.timedelta(days=7), None),
}
FACETS = ("workflow", "case_type", "reason", "executor", "age")
# Values a facet lists, most approvals first; the one selected is listed even if not among them.
_FACET_VALUES = 30


def _blank_is_none(value: Any) -> Any:
    """A form's empty choice ("any") is no filter."""
    return None if value == "" else value


_Name = Annotated[
    str | None,
    BeforeValidator(_blank_is_none),
    StringConstraints(min_length=1, max_length=128),
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
    q: Annotated[str | None, BeforeValidator(_blank_is_none), StringConstraints(max_length=200)] = (
        None
    )
    sort: Literal["newest", "expiry"] = "newest"
    page: int = Field(default=1, ge=1, le=1_000_000)

    @property
    def filtered(self) -> bool:
        """Whether any filter or search narrows the status's approvals."""
        return any(getattr(self, name) is not None for name in (*FACETS, "q"))

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


def _conditions(query: InboxQuery, now: dt.datetime) -> dict[str, ColumnElement[bool]]:
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
        conditions["reason"] = a.id.in_(
            sa.select(APPROVAL_REASONS.c.approval_id).where(APPROVAL_REASONS.c.code == query.reason)
        )
    if query.age is not None:
        conditions["age"] = _age(query.age, now)
    if query.q is not None and query.q.strip():
        term = query.q.strip()
        conditions["q"] = sa.or_(
            a.action_type.icontains(term, autoescape=True),
            a.resource.icontains(term, autoescape=True),
            a.executor.icontains(term, autoescape=True),
        )
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


def select_page(
    conn: Connection, query: InboxQuery, seen: ColumnElement[bool], now: dt.datetime
) -> InboxPage:
    """The page ``query`` asks for among the approvals ``seen`` lets the caller see; a page past
    the last is the last."""
    where = [seen, *_conditions(query, now).values()]
    total = conn.execute(sa.select(sa.func.count()).select_from(APPROVALS).where(*where)).scalar()
    total = int(total or 0)
    pages = max(1, -(-total // PAGE_SIZE))
    page = min(query.page, pages)
    a = APPROVALS.c
    order = (a.expires_at.asc(), a.id) if query.sort == "expiry" else (a.created_at.desc(), a.id)
    rows = conn.execute(
        sa.select(APPROVALS)
        .where(*where)
        .order_by(*order)
        .limit(PAGE_SIZE)
        .offset((page - 1) * PAGE_SIZE)
    ).all()
    return InboxPage(query=query, rows=list(rows), total=total, page=page, pages=pages)


def count_facets(
    conn: Connection, query: InboxQuery, seen: ColumnElement[bool], now: dt.datetime
) -> dict[str, list[tuple[str, int]]]:
    """For each facet, its values with how many approvals each would show, the facet's own
    filter left out and the others kept; most first, the selected value always listed."""
    conditions = _conditions(query, now)

    def others(facet: str) -> list[ColumnElement[bool]]:
        return [seen, *(c for name, c in conditions.items() if name != facet)]

    counts: dict[str, list[tuple[str, int]]] = {}
    a = APPROVALS.c
    for facet, column in (
        ("workflow", a.workflow),
        ("case_type", a.case_type),
        ("executor", a.executor),
    ):
        number = sa.func.count().label("n")
        found = conn.execute(
            sa.select(column, number)
            .where(*others(facet))
            .group_by(column)
            .order_by(number.desc(), column)
            .limit(_FACET_VALUES)
        ).all()
        counts[facet] = _with_selected([(str(v), int(n)) for v, n in found], getattr(query, facet))
    number = sa.func.count().label("n")
    code = APPROVAL_REASONS.c.code
    found = conn.execute(
        sa.select(code, number)
        .select_from(
            APPROVAL_REASONS.join(APPROVALS, APPROVALS.c.id == APPROVAL_REASONS.c.approval_id)
        )
        .where(*others("reason"))
        .group_by(code)
        .order_by(number.desc(), code)
        .limit(_FACET_VALUES)
    ).all()
    counts["reason"] = _with_selected([(str(v), int(n)) for v, n in found], query.reason)
    sums = [sa.func.sum(sa.case((_age(name, now), 1), else_=0)) for name in AGES]
    ages = conn.execute(sa.select(*sums).select_from(APPROVALS).where(*others("age"))).one()
    counts["age"] = [(name, int(n or 0)) for name, n in zip(AGES, ages, strict=True)]
    return counts


def _with_selected(found: list[tuple[str, int]], selected: str | None) -> list[tuple[str, int]]:
    if selected is None or any(value == selected for value, _ in found):
        return found
    return [*found, (selected, 0)]
