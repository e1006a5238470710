"""How the pages write things: entry times, ages and time left, JSON, basis points,
confidence, ids that link to their pages, and the line a refused form value gets.

``JINJA_FILTERS`` are the ones the templates use (``when``, ``pretty``, ``linkify``, ``pct``);
the rest are called by the pages as they build a template's context.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable
from typing import Any

import pydantic
from markupsafe import Markup, escape

__all__ = [
    "JINJA_FILTERS",
    "describe_first_error",
    "link_ids",
    "parse_time",
    "show_age",
    "show_basis_points",
    "show_confidence",
    "show_fields",
    "show_json",
    "show_time",
    "show_time_left",
]

_IDS = re.compile(r"\b(apr|act)_[0-9a-f]{8,40}\b")


def parse_time(stamp: str) -> dt.datetime:
    """An entry time (``…Z``) as an aware datetime."""
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def show_time(stamp: str | None) -> str:
    """``2026-11-25 14:12:57`` from an entry time (UTC)."""
    if not stamp:
        return "—"
    return parse_time(stamp).strftime("%Y-%m-%d %H:%M:%S")


def show_json(value: Any) -> str:
    """Indented, keys sorted, non-ASCII kept."""
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


def show_fields(value: Any, prefix: str = "") -> list[tuple[str, str]]:
    """A proposal's fields as rows of a dotted name and its value (``params.amount``, ``84.50``):
    objects are opened, lists and other values written as JSON unless they are text."""
    if isinstance(value, dict) and value:
        rows: list[tuple[str, str]] = []
        for key in sorted(value):
            rows += show_fields(value[key], f"{prefix}.{key}" if prefix else str(key))
        return rows
    return [(prefix, value if isinstance(value, str) else show_json(value))]


def link_ids(text: str, base: str) -> Markup:
    """Escape ``text`` and link the approval ids in it to their pages."""
    out, last = [], 0
    for match in _IDS.finditer(text):
        out.append(escape(text[last : match.start()]))
        ident = match.group(0)
        if ident.startswith("apr_"):
            out.append(
                Markup('<a class="mono" href="{}/approvals/{}">{}</a>').format(base, ident, ident)
            )
        else:
            out.append(Markup('<span class="mono">{}</span>').format(ident))
        last = match.end()
    out.append(escape(text[last:]))
    return Markup("").join(out)


def show_basis_points(bp: int) -> str:
    """``12.50 %`` from 1250 basis points."""
    return f"{bp // 100}.{bp % 100:02d} %"


def show_time_left(expires_at: str, now: dt.datetime) -> tuple[str, str]:
    """How long until ``expires_at``, and a tone: expired, urgent (< 1 h), soon (< 4 h)."""
    seconds = int((parse_time(expires_at) - now).total_seconds())
    if seconds <= 0:
        return "expired", "expired"
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        text = f"{days} d {hours} h"
    elif hours:
        text = f"{hours} h {minutes:02d} m"
    else:
        text = f"{minutes} m" if minutes else "< 1 m"
    tone = "urgent" if seconds < 3600 else "soon" if seconds < 4 * 3600 else ""
    return text, tone


def show_age(stamp: str, now: dt.datetime) -> str:
    """How long ago: ``just now``, ``5 m ago``, ``3 h ago``, ``2 d ago``."""
    seconds = int((now - parse_time(stamp)).total_seconds())
    if seconds < 60:
        return "just now"
    if seconds < 3600:
        return f"{seconds // 60} m ago"
    if seconds < 86400:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} d ago"


def show_confidence(value: str | None) -> str:
    """Two decimals (``0.90``); ``—`` when the executor gave none."""
    if value is None:
        return "—"
    try:
        return f"{float(value):.2f}"
    except ValueError:
        return value


def describe_first_error(exc: pydantic.ValidationError, field: str) -> tuple[str, str]:
    """The field of a form's first invalid value (``field`` if it names none), and the line
    the page shows for it."""
    first = exc.errors()[0]
    where = str(first["loc"][0]) if first["loc"] else field
    return where, f"{where}: {first['msg']}"


JINJA_FILTERS: dict[str, Callable[..., Any]] = {
    "when": show_time,
    "pretty": show_json,
    "linkify": link_ids,
    "pct": show_basis_points,
}
