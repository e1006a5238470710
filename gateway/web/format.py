"""How the pages write things: entry times, ages and time left, JSON, basis points, a
proposal's fields as rows, an action's ledger timeline as lines,
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

from gateway.decision.personal import show_erased
from gateway.schemas import ActionView

__all__ = [
    "JINJA_FILTERS",
    "describe_first_error",
    "link_ids",
    "parse_time",
    "show_age",
    "show_basis_points",
    "show_confidence",
    "show_evidence",
    "show_fields",
    "show_json",
    "show_time",
    "show_time_left",
    "show_timeline",
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


def show_evidence(action: ActionView) -> dict[str, Any]:
    """What ``_evidence.html`` shows of an action: the proposal (erased values named) as JSON
    and as rows, who proposed it, the decision trace and ledger block, and the timeline."""
    entry = next((t for t in action.timeline if t["kind"] == "proposal"), None)
    proposal = None if entry is None else show_erased(entry["body"]["proposal"])
    return {
        "action": action,
        "trace": action.decision.trace,
        "ledger": action.decision.ledger,
        "proposal": proposal,
        "fields": [] if proposal is None else show_fields(proposal),
        "proposer": None if entry is None else entry["body"].get("executor"),
        "timeline": show_timeline(action),
    }


def show_timeline(action: ActionView) -> list[dict[str, Any]]:
    """The action's ledger entries, each with who did it and a line saying what happened."""
    lines = []
    for item in action.timeline:
        kind, body = item["kind"], item.get("body") or {}
        who, text = "mandate", kind
        if kind == "proposal":
            proposal = body.get("proposal") or {}
            who = (body.get("executor") or {}).get("name", "?")
            text = f"proposed {proposal.get('action_type')} on {proposal.get('resource')}"
        elif kind == "decision":
            trace = body.get("trace") or {}
            text = f"verdict {body.get('verdict')}; recommends {trace.get('recommendation')}"
            if body.get("reevaluated"):
                text = f"re-evaluated ({body['reevaluated'].get('because')}): {text}"
            if body.get("approval"):
                held = body["approval"]
                text += f"; awaits approval {held.get('id')} (quorum {held.get('quorum')})"
        elif kind in ("approval", "rejection"):
            who = (body.get("voter") or {}).get("name", "?")
            verb = "approved" if kind == "approval" else "rejected"
            text = f"{verb}: {body['reason']}" if body.get("reason") else verb
        elif kind == "expiry":
            text = f"approval {body.get('approval_id')} expired: no quorum in time"
        elif kind == "withdrawal":
            text = f"withdrawn: {body.get('reason')}"
        elif kind == "execution":
            attempt, adapter = body.get("attempt"), body.get("adapter")
            if body.get("result") == "retry":
                text = (
                    f"attempt {attempt} failed ({body.get('error')}); "
                    f"next at {show_time(body.get('next_attempt_at'))}"
                )
            else:
                target = body.get("target")
                text = f"dispatched via {adapter}" + (f" to {target}" if target else "")
                text += f" (attempt {attempt})"
                if adapter == "callback":
                    text += "; the executor carries it out and reports the outcome"
        elif kind == "outcome":
            detail = body.get("detail")
            text = f"outcome: {body.get('status')}"
            if isinstance(detail, dict) and detail.get("detail"):
                text += f" ({detail['detail']})"
            elif detail:
                text += f" ({json.dumps(detail, sort_keys=True)})"
        elif kind == "exception":
            who, event = item.get("actor") or who, body.get("event")
            if event == "opened":
                text = f"handed to people as exception {body.get('exception_id')}"
            else:
                verb = "retried" if event == "retry" else "marked handled"
                text = f"exception {body.get('exception_id')} {verb}: {body.get('note') or '-'}"
        lines.append(
            {"seq": item["seq"], "time": item["time"], "kind": kind, "who": who, "text": text}
        )
    return lines


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
