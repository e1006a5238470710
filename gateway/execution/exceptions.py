"""Exceptions: a failed execution handed to people, with what was attempted and what failed.

A webhook dispatch that fails after its retries, or an outcome its executor reports ``failed``,
opens an exception in the same ledger transaction as the ``outcome`` entry (``opening``): an
``exception`` entry and a row in ``gateway_exceptions``. Approvers of the action's workflow
(and governors) choose once what becomes of it: **retry** (a webhook action's intent is
dispatched again by the normal dispatcher; a callback action is carried out by its executor,
so the gateway cannot retry it) or **handled**, with a note saying how. The choice is an
``exception`` entry too; a second choice is a Conflict. Neither the proposing executor nor
anyone of its owner chooses (separation of duties). Each step moves the case type's figures
(``mark_exception``).
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Callable
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from gateway.autonomy.figures import mark_exception
from gateway.autonomy.levels import AutonomyBook
from gateway.binding import confine, confine_query
from gateway.db.tables import ACTIONS, EVENTS, EXCEPTIONS, INTENTS
from gateway.errors import Conflict, Forbidden, InvalidInput, NotFound
from gateway.identity import Identity
from gateway.policy.active import ActivePolicy
from gateway.schemas import ExceptionView
from ledger.entry import format_time
from ledger.store import Appended, Ledger, Record

__all__ = ["Exceptions", "Opening", "attempts_of", "view"]

# Who sees every exception in their reach and may choose on it, beside the workflow's approvers.
_GOVERNOR = "governor"
_OVERSEERS = (_GOVERNOR, "auditor")


class Opening:
    """An exception about to be opened with an ``outcome`` entry: its entry, and the row and
    figures written in the outcome's transaction (``write``, given the appended entry)."""

    def __init__(self, action_id: str, cause: str, attempts: list[dict[str, Any]]) -> None:
        self.id = f"exc_{secrets.token_hex(12)}"
        self.action_id = action_id
        self.cause = cause
        self.attempts = attempts
        body = {
            "exception_id": self.id,
            "action_id": action_id,
            "event": "opened",
            "cause": cause,
            "attempts": attempts,
        }
        self.record = Record("exception", "mandate", action_id, body)

    def write(self, conn: Connection, entry: Appended) -> None:
        """The row, the action's index and its figures, in the entry's transaction."""
        action = conn.execute(sa.select(ACTIONS).where(ACTIONS.c.id == self.action_id)).one()
        adapter = conn.execute(
            sa.select(INTENTS.c.adapter).where(INTENTS.c.action_id == self.action_id)
        ).scalar_one()
        conn.execute(
            sa.insert(EXCEPTIONS).values(
                id=self.id,
                action_id=self.action_id,
                workflow=action.workflow,
                case_type=action.case_type,
                action_type=action.action_type,
                executor=action.executor,
                proposer_owner=action.owner,
                adapter=adapter,
                cause=self.cause,
                status="open",
                attempts=orjson.dumps(self.attempts),
                seq=entry.seq,
                created_at=entry.time,
            )
        )
        conn.execute(sa.insert(EVENTS).values(_event(entry, self.action_id)))
        mark_exception(conn, self.action_id, handled=False)


def _event(entry: Appended, action_id: str) -> dict[str, Any]:
    return {"seq": entry.seq, "action_id": action_id, "kind": "exception", "time": entry.time}


def attempts_of(ledger: Ledger, engine: Engine, action_id: str) -> list[dict[str, Any]]:
    """The errors of the attempts since the action was last handed to people (or ever): each
    retried attempt's ``execution`` entry, read from the ledger."""
    with engine.connect() as conn:
        seqs = conn.execute(
            sa.select(EVENTS.c.seq, EVENTS.c.kind)
            .where(EVENTS.c.action_id == action_id, EVENTS.c.kind.in_(("execution", "exception")))
            .order_by(EVENTS.c.seq)
        ).all()
    found: list[dict[str, Any]] = []
    for seq, kind in seqs:
        if kind == "exception":
            found = []  # an earlier hand-over holds the attempts before it
            continue
        body = ledger.entry(seq).body
        if body.get("result") == "retry":
            found.append({"attempt": body["attempt"], "error": str(body.get("error", ""))})
    return found


class _Closed(Exception):
    """The exception was closed by someone else meanwhile."""


class Exceptions:
    """Lists exceptions, and records people's choice on each."""

    def __init__(
        self,
        engine: Engine,
        ledger: Ledger,
        *,
        policy: Callable[[], ActivePolicy],
        autonomy: AutonomyBook,
        clock: Callable[[], dt.datetime],
        wake_dispatcher: Callable[[], None] = lambda: None,
    ) -> None:
        self._engine = engine
        self._ledger = ledger
        self._policy = policy
        self._autonomy = autonomy
        self._clock = clock
        self._wake = wake_dispatcher

    # -- who may -------------------------------------------------------------------------------

    def _approves(self, identity: Identity, row: Any) -> bool:
        permitter = self._policy().permitter
        return permitter.permit(identity.role, row.workflow, row.action_type, "approve").allowed

    def _check_sight(self, identity: Identity, row: Any) -> None:
        confine(identity, row.workflow, f"exception {row.id}")
        if identity.role in _OVERSEERS or self._approves(identity, row):
            return
        raise Forbidden(
            f"role {identity.role!r} may not handle exceptions in workflow {row.workflow!r}: "
            "approvers of the workflow and governors may"
        )

    def may_choose(self, identity: Identity, row: Any) -> bool:
        """Whether this caller may retry or close the exception: a governor, or an approver of
        its workflow, who is not its proposer."""
        if identity.owner == row.proposer_owner or identity.name == row.executor:
            return False
        return identity.role == _GOVERNOR or self._approves(identity, row)

    # -- reading -------------------------------------------------------------------------------

    def list(self, identity: Identity, status: str | None = "open") -> list[ExceptionView]:
        """The exceptions this caller may see, newest first (at most 500)."""
        query = sa.select(EXCEPTIONS).order_by(
            EXCEPTIONS.c.created_at.desc(), EXCEPTIONS.c.id.desc()
        )
        if status is not None:
            query = query.where(EXCEPTIONS.c.status == status)
        query = confine_query(query, EXCEPTIONS.c.workflow, identity)
        with self._engine.connect() as conn:
            rows = conn.execute(query.limit(500)).all()
        return [
            view(row)
            for row in rows
            if identity.role in _OVERSEERS or self._approves(identity, row)
        ]

    def count_open(self, identity: Identity) -> int:
        """How many open exceptions this caller may see (the inbox's count)."""
        return len(self.list(identity, "open"))

    def row(self, identity: Identity, exception_id: str) -> Any:
        """The stored row, if this caller may see it."""
        with self._engine.connect() as conn:
            row = conn.execute(sa.select(EXCEPTIONS).where(EXCEPTIONS.c.id == exception_id)).first()
        if row is None:
            raise NotFound(f"no exception {exception_id}")
        self._check_sight(identity, row)
        return row

    def get(self, identity: Identity, exception_id: str) -> ExceptionView:
        """One exception, if this caller may see it."""
        return view(self.row(identity, exception_id))

    def opened(self, action_id: str) -> ExceptionView | None:
        """The action's open exception, if it has one (its outcome just opened it, say)."""
        with self._engine.connect() as conn:
            row = conn.execute(
                sa.select(EXCEPTIONS)
                .where(EXCEPTIONS.c.action_id == action_id, EXCEPTIONS.c.status == "open")
                .order_by(EXCEPTIONS.c.seq.desc())
                .limit(1)
            ).first()
        return None if row is None else view(row)

    # -- choosing ------------------------------------------------------------------------------

    async def decide(
        self, identity: Identity, exception_id: str, decision: str, note: str
    ) -> ExceptionView:
        """Retry the action, or close the exception as handled (a note required). Forbidden for
        the proposer and for whoever may not approve in the workflow; Conflict when it is
        closed already, or a retry is asked of a callback action."""
        row = self.row(identity, exception_id)
        if not self.may_choose(identity, row):
            if identity.owner == row.proposer_owner or identity.name == row.executor:
                raise Forbidden("separation of duties: nobody handles their own proposal's failure")
            raise Forbidden(
                f"role {identity.role!r} may not handle exceptions in workflow "
                f"{row.workflow!r}: approvers of the workflow and governors may"
            )
        note = note.strip()
        if decision == "handled" and not note:
            raise InvalidInput([("note", "say how it was handled: a note is required")])
        if row.status != "open":
            raise Conflict(f"exception {exception_id} is {row.status} already")
        if decision == "retry" and row.adapter != "webhook":
            raise Conflict(
                f"action {row.action_id} is carried out by its executor ({row.adapter}): the "
                "gateway cannot retry it; mark it handled once it is dealt with"
            )
        try:
            await self._record(identity, row, decision, note)
        except _Closed:
            raise Conflict(f"exception {exception_id} was closed meanwhile") from None
        if decision == "retry":
            self._wake()
        await self._autonomy.after(row.workflow, row.case_type)  # the figures moved
        return self.get(identity, exception_id)

    async def _record(self, identity: Identity, row: Any, decision: str, note: str) -> None:
        body = {
            "exception_id": row.id,
            "action_id": row.action_id,
            "event": decision,
            "note": note,
        }
        status = "retried" if decision == "retry" else "handled"

        def close(conn: Connection, appended: list[Appended]) -> None:
            entry = appended[0]
            moved = conn.execute(
                sa.update(EXCEPTIONS)
                .where(EXCEPTIONS.c.id == row.id, EXCEPTIONS.c.status == "open")
                .values(
                    status=status,
                    closed_by=identity.name,
                    note=note,
                    closed_seq=entry.seq,
                    closed_at=entry.time,
                )
            )
            if moved.rowcount != 1:
                raise _Closed
            if decision == "retry":
                # The intent starts over: the dispatcher claims it now, with all its attempts.
                retried = conn.execute(
                    sa.update(INTENTS)
                    .where(INTENTS.c.action_id == row.action_id, INTENTS.c.status == "failed")
                    .values(
                        status="pending",
                        attempts=0,
                        next_attempt_at=format_time(self._clock()),
                        lease_until=None,
                        updated_at=entry.time,
                    )
                )
                if retried.rowcount != 1:
                    raise _Closed
                allowed = sa.update(ACTIONS).where(ACTIONS.c.id == row.action_id)
                conn.execute(allowed.values(status="approved"))
            conn.execute(sa.insert(EVENTS).values(_event(entry, row.action_id)))
            mark_exception(conn, row.action_id, handled=True)

        await self._ledger.append_many_async(
            [Record("exception", identity.name, row.action_id, body)], in_transaction=close
        )


def view(row: Any) -> ExceptionView:
    """The row as the API shows it."""
    return ExceptionView.model_validate(
        {
            "id": row.id,
            "action_id": row.action_id,
            "workflow": row.workflow,
            "case_type": row.case_type,
            "action_type": row.action_type,
            "executor": row.executor,
            "adapter": row.adapter,
            "cause": row.cause,
            "status": row.status,
            "retry_offered": row.adapter == "webhook",
            "attempts": orjson.loads(row.attempts),
            "seq": row.seq,
            "created_at": row.created_at,
            "closed_by": row.closed_by,
            "note": row.note,
            "closed_seq": row.closed_seq,
            "closed_at": row.closed_at,
        }
    )
