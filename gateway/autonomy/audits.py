"""Post-hoc audit: the auditors' findings on the sampled actions
(``gateway.autonomy.sampling``), and corrections of executed actions.

A finding (``correct`` | ``incorrect``, with a note) is an ``audit`` entry, written by someone
Casbin lets ``audit`` in the action's workflow, never by the proposer's owner; it marks the
action in the figures (a review: agreement, or an audit finding). A correction (the action had
to be undone or fixed after it ran) is an ``outcome`` entry with status ``corrected``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from gateway.autonomy.figures import mark_audit, mark_correction
from gateway.autonomy.levels import AutonomyBook
from gateway.binding import confine, confine_query, reaches
from gateway.db.tables import ACTIONS, AUDITS, EVENTS, INTENTS
from gateway.errors import Conflict, Forbidden, InvalidInput, NotFound
from gateway.identity import Identity, may_act_for
from gateway.policy.active import ActivePolicy
from gateway.schemas import AuditView, CorrectionRequest, FindingRequest
from ledger.store import Appended, Ledger, Record

__all__ = ["Audits"]


class _Closed(Exception):
    """Someone settled it first, between the check and the entry."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


def _event(entry: Appended, action_id: str, kind: str) -> dict[str, Any]:
    return {"seq": entry.seq, "action_id": action_id, "kind": kind, "time": entry.time}


class Audits:
    """The audit queue, findings and corrections."""

    def __init__(
        self,
        engine: Engine,
        ledger: Ledger,
        *,
        policy: Callable[[], ActivePolicy],
        autonomy: AutonomyBook,
    ) -> None:
        """``policy`` gives the policy in force."""
        self._engine = engine
        self._ledger = ledger
        self._policy = policy
        self._autonomy = autonomy

    # -- who may ---------------------------------------------------------------------------

    def may_audit(self, identity: Identity, workflow: str, action_type: str) -> bool:
        """Whether Casbin lets this caller audit this kind of action in this workflow."""
        if not reaches(identity, workflow):
            return False
        permitter = self._policy().permitter
        return permitter.permit(identity.role, workflow, action_type, "audit").allowed

    def _auditor(self, identity: Identity) -> None:
        if identity.role not in self._policy().permitter.roles_with_act("audit"):
            raise Forbidden(f"role {identity.role!r} may not audit")

    # -- reading ---------------------------------------------------------------------------

    def list(self, identity: Identity, status: str | None = "pending") -> list[AuditView]:
        """Audits this caller may carry out, oldest first (the queue's order)."""
        self._auditor(identity)
        query = sa.select(AUDITS).order_by(AUDITS.c.decision_seq)
        if status is not None:
            query = query.where(AUDITS.c.status == status)
        query = confine_query(query, AUDITS.c.workflow, identity)
        with self._engine.connect() as conn:
            rows = conn.execute(query.limit(500)).all()
        return [
            _view(row)
            for row in rows
            if self.may_audit(identity, row.workflow, _summary(row)["action_type"])
        ]

    def get(self, identity: Identity, audit_id_: str) -> AuditView:
        """One audit, if this caller may carry it out."""
        row = self._row(audit_id_)
        self._check(identity, row)
        return _view(row)

    def _row(self, audit_id_: str) -> Any:
        with self._engine.connect() as conn:
            row = conn.execute(sa.select(AUDITS).where(AUDITS.c.id == audit_id_)).first()
        if row is None:
            raise NotFound(f"no audit {audit_id_}")
        return row

    def _check(self, identity: Identity, row: Any) -> None:
        confine(identity, row.workflow, f"audit {row.id}")
        action_type = _summary(row)["action_type"]
        if not self.may_audit(identity, row.workflow, action_type):
            raise Forbidden(
                f"role {identity.role!r} may not audit {action_type} in workflow {row.workflow!r}"
            )

    # -- findings --------------------------------------------------------------------------

    async def record(
        self, identity: Identity, audit_id_: str, finding: FindingRequest
    ) -> AuditView:
        """Record a finding as an ``audit`` entry; it feeds the figures of the case type."""
        row = self._row(audit_id_)
        self._check(identity, row)
        if identity.owner == row.proposer_owner:
            raise Forbidden("separation of duties: nobody audits their own proposal")
        if finding.finding == "incorrect" and not finding.note.strip():
            raise InvalidInput([("note", "a note is required for an incorrect finding")])
        if row.status != "pending":
            if row.status == finding.finding and row.auditor == identity.name:
                return _view(row)  # the same finding again (a retry whose answer was lost)
            raise Conflict(f"audit {audit_id_} is settled: {row.status}, by {row.auditor}")
        body = {
            "audit_id": row.id,
            "action_id": row.action_id,
            "finding": finding.finding,
            "note": finding.note,
            "auditor": identity.to_json(),
            "level": row.level,
            "rate_bp": row.rate_bp,
            "decision_seq": row.decision_seq,
        }

        def settle(conn: Connection, appended: list[Appended]) -> None:
            entry = appended[0]
            moved = conn.execute(
                sa.update(AUDITS)
                .where(AUDITS.c.id == row.id, AUDITS.c.status == "pending")
                .values(
                    status=finding.finding,
                    auditor=identity.name,
                    note=finding.note,
                    finding_seq=entry.seq,
                    closed_at=entry.time,
                )
            )
            if moved.rowcount != 1:
                raise _Closed("settled")
            mark_audit(conn, row.action_id, finding.finding)
            conn.execute(sa.insert(EVENTS).values(_event(entry, row.action_id, "audit")))

        try:
            await self._ledger.append_many_async(
                [Record("audit", identity.name, row.action_id, body)], in_transaction=settle
            )
        except _Closed:
            raise Conflict(f"audit {audit_id_} was settled by someone else just now") from None
        await self._autonomy.after(row.workflow, row.case_type)
        return _view(self._row(audit_id_))

    # -- corrections -----------------------------------------------------------------------

    async def correct(
        self, identity: Identity, action_id: str, correction: CorrectionRequest
    ) -> None:
        """Record that an executed action was corrected afterwards (an ``outcome`` entry with
        status ``corrected``). Who may report its outcome, and its auditors and governors,
        may."""
        if not correction.reason.strip():
            raise InvalidInput([("reason", "say what was corrected and why")])
        with self._engine.connect() as conn:
            action = conn.execute(sa.select(ACTIONS).where(ACTIONS.c.id == action_id)).first()
            if action is None:
                raise NotFound(f"no action {action_id}")
            intent = conn.execute(
                sa.select(INTENTS.c.status).where(INTENTS.c.action_id == action_id)
            ).scalar()
        confine(identity, action.workflow, f"action {action_id}")
        permitter = self._policy().permitter
        allowed = any(
            permitter.permit(identity.role, action.workflow, obj, act).allowed
            for obj, act in ((action.action_type, "audit"), (action.case_type, "govern"))
        ) or may_act_for(self._ledger, identity, action.executor, action.proposal_seq)
        if not allowed:
            raise Forbidden(
                "only the executor that proposed an action, and its auditors and governors, "
                "report a correction"
            )
        if intent != "succeeded":
            raise Conflict(
                f"action {action_id} is {action.status}: only an action carried out "
                "successfully can be corrected"
            )
        body = {
            "action_id": action_id,
            "status": "corrected",
            "attempt": None,
            "detail": correction.details,
            "reason": correction.reason,
            "by": identity.to_json(),
        }

        def mark(conn: Connection, appended: list[Appended]) -> None:
            if not mark_correction(conn, action_id):
                raise _Closed("corrected")
            conn.execute(sa.insert(EVENTS).values(_event(appended[0], action_id, "outcome")))

        try:
            await self._ledger.append_many_async(
                [Record("outcome", identity.name, action_id, body)], in_transaction=mark
            )
        except _Closed:
            raise Conflict(f"action {action_id} was corrected already") from None
        await self._autonomy.after(action.workflow, action.case_type)


def _summary(row: Any) -> dict[str, Any]:
    summary = orjson.loads(row.summary)
    assert isinstance(summary, dict)
    return summary


def _view(row: Any) -> AuditView:
    summary = _summary(row)
    return AuditView(
        id=row.id,
        action_id=row.action_id,
        workflow=row.workflow,
        case_type=row.case_type,
        action_type=summary["action_type"],
        resource=summary["resource"],
        executor=summary["executor"],
        amount=summary.get("amount"),
        currency=summary.get("currency"),
        level=row.level,
        rate_bp=row.rate_bp,
        status=row.status,
        created_at=row.created_at,
        decision_seq=row.decision_seq,
        auditor=row.auditor,
        note=row.note,
        finding_seq=row.finding_seq,
        closed_at=row.closed_at,
    )
