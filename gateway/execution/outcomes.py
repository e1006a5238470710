"""Outcomes: how an allowed action ended, recorded once, with its intent and figures."""

from __future__ import annotations

from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from gateway.autonomy.figures import mark_outcome
from gateway.db.tables import ACTIONS, EVENTS, INTENTS
from gateway.execution.exceptions import Opening
from ledger.store import Appended, Ledger, Record

__all__ = ["event_row", "record_outcome"]


def event_row(seq: int, action_id: str, kind: str, time: str) -> dict[str, Any]:
    """An action's index row for one of its ledger entries (``gateway_events``)."""
    return {"seq": seq, "action_id": action_id, "kind": kind, "time": time}


async def record_outcome(
    ledger: Ledger,
    action_id: str,
    *,
    actor: str,
    status: str,
    detail: Any,
    attempt: int | None,
    expect: tuple[str, ...],
    adapter: str | None = None,
    carried_out: bool = True,
    attempts: list[dict[str, Any]] | None = None,
) -> Appended:
    """Write an ``outcome`` entry and settle the intent and the action (and the action's
    measured figures), atomically.

    ``expect`` lists the intent statuses (and ``adapter`` the adapter) from which this outcome
    may be recorded; otherwise (already settled, say) nothing is written and ``LookupError`` is
    raised. An action that was not ``carried_out`` (its personal data erased first) does not
    count in its case type's figures.

    A failure of an action that was carried out is handed to people: an ``exception`` entry
    follows the outcome's, in its transaction (``gateway.execution.exceptions``). ``attempts``
    lists the errors of the dispatcher's attempts; an executor's report (``attempt`` None) is
    its one attempt, its details the error.
    """
    body = {"action_id": action_id, "status": status, "attempt": attempt, "detail": detail}
    records = [Record("outcome", actor, action_id, body)]
    opening = None
    if status == "failed" and carried_out:
        cause = "outcome_failed" if attempt is None else "dispatch_failed"
        tried = attempts or [{"attempt": attempt, "error": _error(detail)}]
        opening = Opening(action_id, cause, tried)
        records.append(opening.record)

    def settle(conn: Connection, appended: list[Appended]) -> None:
        entry = appended[0]
        which = sa.and_(INTENTS.c.action_id == action_id, INTENTS.c.status.in_(expect))
        if adapter is not None:
            which = sa.and_(which, INTENTS.c.adapter == adapter)
        moved = conn.execute(
            sa.update(INTENTS)
            .where(which)
            .values(status=status, lease_until=None, updated_at=entry.time)
        )
        if moved.rowcount != 1:
            raise LookupError(f"action {action_id} has no intent waiting for an outcome")
        conn.execute(sa.update(ACTIONS).where(ACTIONS.c.id == action_id).values(status=status))
        row = event_row(entry.seq, action_id, "outcome", entry.time)
        conn.execute(sa.insert(EVENTS).values(row))
        if carried_out:
            mark_outcome(conn, action_id, status)
        if opening is not None:
            opening.write(conn, appended[1])

    return (await ledger.append_many_async(records, in_transaction=settle))[0]


def _error(detail: Any) -> str:
    """What went wrong, in words: the detail's ``detail`` if it has one, else all of it."""
    if isinstance(detail, dict) and isinstance(detail.get("detail"), str):
        return str(detail["detail"])
    return orjson.dumps(detail).decode()
