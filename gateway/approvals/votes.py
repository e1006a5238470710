"""Approvals: people decide held actions, under separation of duties, before they expire.

Who may vote is Casbin's answer (``approve`` in the action's workflow). The proposer, and any
token of the same owner, never votes on its own proposal. A vote is a ledger entry written in
the same transaction that counts it, and that transaction holds the ledger's append lock, so
votes arriving at once on several gateway processes are counted one at a time: one rejection
rejects; the vote that reaches quorum approves and writes the execution intent. An approval is
bound to the proposal and policy bundle it was asked for: if the active bundle changed, the
next vote re-evaluates the proposal instead of counting.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from gateway.approvals.inbox import InboxPage, InboxQuery, read_page
from gateway.autonomy.figures import mark_expired, mark_vote
from gateway.autonomy.levels import AutonomyBook
from gateway.binding import confine, confine_query, reaches
from gateway.db.tables import ACTIONS, APPROVALS, EVENTS, INTENTS, VOTES
from gateway.decision.records import Judgement, approval_row
from gateway.errors import Conflict, Forbidden, InvalidInput, NotFound
from gateway.execution.routing import Routing, intent_row
from gateway.identity import Identity, may_act_for
from gateway.policy.active import ActivePolicy
from gateway.schemas import ApprovalView, Proposal, Reason, VoteRequest, VoteView
from ledger.entry import format_time
from ledger.store import Appended, Ledger, Record

__all__ = ["Approvals"]

OVERSEERS = ("governor", "auditor")
log = logging.getLogger("mandate")


class _Closed(Exception):
    """The approval was settled by someone else between the check and the vote."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


def _event(entry: Appended, action_id: str, kind: str) -> dict[str, Any]:
    return {"seq": entry.seq, "action_id": action_id, "kind": kind, "time": entry.time}


class Reevaluate(Protocol):
    """Decides a held proposal again under the policy in force (``Decider.judgement``)."""

    def __call__(
        self,
        identity: Identity,
        proposal: Proposal,
        policy: ActivePolicy,
        moment: dt.datetime,
        *,
        admitted: str | None = None,
        admitted_history: dict[str, Any] | None = None,
    ) -> Judgement: ...


class Approvals:
    """Lists, votes on and expires approvals."""

    def __init__(
        self,
        engine: Engine,
        ledger: Ledger,
        *,
        policy: Callable[[], ActivePolicy],
        autonomy: AutonomyBook,
        routing: Routing,
        judgement: Reevaluate,
        clock: Callable[[], dt.datetime],
        wake_dispatcher: Callable[[], None] = lambda: None,
    ) -> None:
        """``policy`` gives the policy in force; ``judgement`` decides a held proposal again
        under it (``Decider.judgement``)."""
        self._engine = engine
        self._ledger = ledger
        self._policy = policy
        self._autonomy = autonomy
        self._routing = routing
        self._judgement = judgement
        self._clock = clock
        self._wake = wake_dispatcher

    # -- reading ---------------------------------------------------------------------------

    def may_vote(self, identity: Identity, workflow: str, action_type: str) -> bool:
        """Whether Casbin lets this caller approve this kind of action in this workflow."""
        if not reaches(identity, workflow):
            return False
        permitter = self._policy().permitter
        return permitter.permit(identity.role, workflow, action_type, "approve").allowed

    def list(self, identity: Identity, status: str | None = "pending") -> list[ApprovalView]:
        """Approvals this caller may see, newest first: approvers see their workflows."""
        query = sa.select(APPROVALS).order_by(APPROVALS.c.created_at.desc(), APPROVALS.c.id)
        if status is not None:
            query = query.where(APPROVALS.c.status == status)
        query = confine_query(query, APPROVALS.c.workflow, identity)
        with self._engine.connect() as conn:
            rows = conn.execute(query.limit(500)).all()
            views = [
                self._view(conn, row)
                for row in rows
                if identity.role in OVERSEERS
                or self.may_vote(identity, row.workflow, _summary(row)["action_type"])
            ]
        return views

    def page(
        self, identity: Identity, query: InboxQuery
    ) -> tuple[InboxPage, Sequence[ApprovalView]]:
        """One page of the approvals this caller may see (``gateway.approvals.inbox``), with
        the counts per filter value: approvers see what they may approve, executors their own
        held proposals, overseers everything in their reach."""
        now = self._clock()
        with self._engine.connect() as conn:
            seen = self._seen(conn, identity, query)
            found = read_page(conn, query, seen, now)
            return found, self._views(conn, found.rows)

    def _seen(self, conn: Connection, identity: Identity, query: InboxQuery) -> Any:
        """The condition on ``gateway_approvals`` of what this caller may see: the workflow and
        action type pairs Casbin lets them approve (few, so asked one by one), and their own."""
        a = APPROVALS.c
        reach = sa.true() if identity.workflow is None else a.workflow == identity.workflow
        if identity.role in OVERSEERS:
            return reach
        kinds = sa.select(a.workflow, a.action_type).distinct()
        if query.status != "all":
            kinds = kinds.where(a.status == query.status)
        pairs = [
            (workflow, action_type)
            for workflow, action_type in conn.execute(kinds.where(reach)).all()
            if self.may_vote(identity, workflow, action_type)
        ]
        approvable = sa.or_(
            sa.false(), *(sa.and_(a.workflow == w, a.action_type == t) for w, t in pairs)
        )
        return sa.and_(reach, sa.or_(approvable, a.proposer_owner == identity.owner))

    def _views(self, conn: Connection, rows: Sequence[Any]) -> Sequence[ApprovalView]:
        """The rows as views, their votes read in one query."""
        votes: dict[str, list[Any]] = {row.id: [] for row in rows}
        if rows:
            for vote in conn.execute(
                sa.select(VOTES).where(VOTES.c.approval_id.in_(votes)).order_by(VOTES.c.seq)
            ).all():
                votes[vote.approval_id].append(vote)
        return [_as_view(row, votes[row.id]) for row in rows]

    def get(self, identity: Identity, approval_id: str) -> ApprovalView:
        """One approval, if this caller may see it."""
        with self._engine.connect() as conn:
            row = self._row(conn, approval_id)
            self._check_sight(identity, row)
            return self._view(conn, row)

    def _row(self, conn: Connection, approval_id: str) -> Any:
        row = conn.execute(sa.select(APPROVALS).where(APPROVALS.c.id == approval_id)).first()
        if row is None:
            raise NotFound(f"no approval {approval_id}")
        return row

    def _check_sight(self, identity: Identity, row: Any) -> None:
        confine(identity, row.workflow, f"approval {row.id}")
        if identity.role in OVERSEERS or identity.owner == row.proposer_owner:
            return
        if not self.may_vote(identity, row.workflow, _summary(row)["action_type"]):
            raise Forbidden(f"role {identity.role!r} may not approve in workflow {row.workflow!r}")

    def _view(self, conn: Connection, row: Any) -> ApprovalView:
        votes = conn.execute(
            sa.select(VOTES).where(VOTES.c.approval_id == row.id).order_by(VOTES.c.seq)
        ).all()
        return _as_view(row, list(votes))

    # -- voting ----------------------------------------------------------------------------

    async def decide(self, identity: Identity, approval_id: str, vote: VoteRequest) -> ApprovalView:
        """Record a vote; reject on the first rejection, approve at quorum."""
        with self._engine.connect() as conn:
            row = self._row(conn, approval_id)
            action = conn.execute(sa.select(ACTIONS).where(ACTIONS.c.id == row.action_id)).one()
            earlier = conn.execute(
                sa.select(VOTES.c.decision).where(
                    VOTES.c.approval_id == approval_id, VOTES.c.voter_owner == identity.owner
                )
            ).scalar()
        if not self.may_vote(identity, row.workflow, action.action_type):
            raise Forbidden(
                f"role {identity.role!r} may not approve {action.action_type} in workflow "
                f"{row.workflow!r}"
                + (f" (token bound to {identity.workflow!r})" if identity.workflow else "")
            )
        if identity.owner == row.proposer_owner or identity.name == action.executor:
            raise Forbidden("separation of duties: nobody approves their own proposal")
        if vote.decision == "reject" and not vote.reason.strip():
            raise InvalidInput([("reason", "a reason is required to reject")])
        if earlier is not None and row.status in ("pending", "approved", "rejected"):
            # Voting twice counts once, also after the votes settled the approval (a retry
            # whose answer was lost); an expired or superseded one takes no votes at all.
            if earlier == vote.decision:
                return self.get(identity, approval_id)
            raise Conflict(f"you already voted {earlier} on approval {approval_id}")
        now = self._clock()
        if row.status != "pending":
            raise Conflict(f"approval {approval_id} is {row.status}; it takes no more votes")
        if format_time(now) >= row.expires_at:
            await self.expire(row.id, row.action_id)
            raise Conflict(f"approval {approval_id} expired at {row.expires_at}")
        # A rejection always counts: re-evaluation guards approvals given under another
        # bundle, and a person's "no" must never turn into an execution.
        if vote.decision == "approve" and row.bundle_digest != self._policy().bundle.digest:
            raise Conflict(await self._reevaluate(row, action))
        try:
            approved = await self._record_vote(identity, row, action, vote)
        except _Closed as exc:
            raise Conflict(
                f"approval {approval_id} is {exc.status}; your vote was not counted"
            ) from None
        except sa.exc.IntegrityError:
            return self.get(identity, approval_id)  # the same vote arrived twice at once
        if approved:
            self._wake()
        if approved or vote.decision == "reject":  # the vote closed it: the figures moved
            await self._autonomy.after(row.workflow, row.case_type)
        return self.get(identity, approval_id)

    async def _record_vote(
        self, identity: Identity, row: Any, action: Any, vote: VoteRequest
    ) -> bool:
        kind = "approval" if vote.decision == "approve" else "rejection"
        body = {
            "approval_id": row.id,
            "action_id": row.action_id,
            "decision": vote.decision,
            "reason": vote.reason,
            "voter": identity.to_json(),
            "quorum": row.quorum,
        }
        outcome: dict[str, bool] = {"approved": False}

        def count(conn: Connection, appended: list[Appended]) -> None:
            entry = appended[0]
            current = conn.execute(
                sa.select(APPROVALS.c.status, APPROVALS.c.expires_at).where(
                    APPROVALS.c.id == row.id
                )
            ).one()
            if current.status != "pending":
                raise _Closed(current.status)
            if entry.time >= current.expires_at:
                raise _Closed("expired")
            conn.execute(
                sa.insert(VOTES).values(
                    approval_id=row.id,
                    voter_owner=identity.owner,
                    voter=identity.name,
                    decision=vote.decision,
                    reason=vote.reason,
                    seq=entry.seq,
                    time=entry.time,
                )
            )
            conn.execute(sa.insert(EVENTS).values(_event(entry, row.action_id, kind)))
            if vote.decision == "reject":
                self._close(conn, row, "rejected", vote.reason, entry.time)
                return
            approvals = conn.execute(
                sa.select(sa.func.count())
                .select_from(VOTES)
                .where(VOTES.c.approval_id == row.id, VOTES.c.decision == "approve")
            ).scalar_one()
            if approvals >= row.quorum:
                self._close(conn, row, "approved", f"quorum of {row.quorum} reached", entry.time)
                conn.execute(
                    sa.insert(INTENTS).values(
                        intent_row(
                            row.action_id,
                            self._routing,
                            action.executor,
                            row.workflow,
                            entry.time,
                        )
                    )
                )
                outcome["approved"] = True

        await self._ledger.append_many_async(
            [Record(kind, identity.name, row.action_id, body)], in_transaction=count
        )
        return outcome["approved"]

    @staticmethod
    def _close(conn: Connection, row: Any, status: str, reason: str, when: str) -> None:
        conn.execute(
            sa.update(APPROVALS)
            .where(APPROVALS.c.id == row.id)
            .values(status=status, closed_at=when, closed_reason=reason)
        )
        conn.execute(sa.update(ACTIONS).where(ACTIONS.c.id == row.action_id).values(status=status))
        mark_vote(conn, row.action_id, status)

    # -- re-evaluation ---------------------------------------------------------------------

    async def _reevaluate(self, row: Any, action: Any) -> str:
        """The bundle changed since this approval was asked for: decide the proposal again.

        The old approval is superseded; the new verdict is recorded as a decision entry, and a
        hold under the new bundle opens a new approval. Returns what the voter is told.
        """
        policy = self._policy()
        # Its sealed values put back (an erased one is marked so: the proposal is then rejected).
        proposed = self._ledger.reveal(action.proposal_seq)
        recorded = proposed["proposal"]
        identity = Identity(**{k: proposed["executor"][k] for k in _IDENTITY_FIELDS})
        proposal = Proposal.model_validate(
            recorded
            | {
                "confidence": None
                if recorded["confidence"] is None
                else float(recorded["confidence"])
            }
        )
        judgement = self._judgement(
            identity,
            proposal,
            policy,
            self._clock(),
            admitted=row.case_type,
            admitted_history=self._ledger.entry(action.decision_seq).body.get("history"),
        )
        decision = judgement.decision
        why = (
            f"the policy bundle changed ({row.bundle_digest[:12]} → {policy.bundle.digest[:12]}) "
            f"since approval {row.id} was asked for"
        )
        body = {
            "action_id": row.action_id,
            "verdict": decision.verdict,
            "reasons": [r.model_dump() for r in decision.reasons],
            "warnings": [r.model_dump() for r in decision.warnings],
            "trace": judgement.trace,
            "approval": None if judgement.approval is None else judgement.approval.model_dump(),
            "stats": judgement.stats,
            "reevaluated": {"because": why, "supersedes": row.id},
        }
        if judgement.history is not None:
            body["history"] = judgement.history

        def supersede(conn: Connection, appended: list[Appended]) -> None:
            entry_ = appended[0]
            current = conn.execute(
                sa.select(APPROVALS.c.status).where(APPROVALS.c.id == row.id)
            ).scalar_one()
            if current != "pending":
                raise _Closed(current)
            conn.execute(
                sa.update(APPROVALS)
                .where(APPROVALS.c.id == row.id)
                .values(status="superseded", closed_at=entry_.time, closed_reason=why)
            )
            status = {"execute": "approved", "hold": "held", "reject": "rejected"}[decision.verdict]
            conn.execute(
                sa.update(ACTIONS).where(ACTIONS.c.id == row.action_id).values(status=status)
            )
            conn.execute(sa.insert(EVENTS).values(_event(entry_, row.action_id, "decision")))
            if judgement.approval is not None:
                conn.execute(
                    sa.insert(APPROVALS).values(
                        approval_row(
                            judgement.approval,
                            row.action_id,
                            identity,
                            proposal,
                            judgement,
                            policy,
                            entry_.time,
                            row.proposal_digest,
                        )
                    )
                )
            elif decision.verdict == "execute":
                conn.execute(
                    sa.insert(INTENTS).values(
                        intent_row(
                            row.action_id, self._routing, identity.name, row.workflow, entry_.time
                        )
                    )
                )

        try:
            await self._ledger.append_many_async(
                [Record("decision", "mandate", row.action_id, body)], in_transaction=supersede
            )
        except _Closed as exc:
            return f"approval {row.id} is {exc.status}; your vote was not counted"
        if decision.verdict == "execute":
            self._wake()
        reasons = "; ".join(f"{r.code}: {r.message}" for r in decision.reasons) or "no reasons"
        follow = (
            f" It needs approval again: approval {judgement.approval.id}."
            if judgement.approval is not None
            else ""
        )
        verdict = f"re-evaluated: {decision.verdict} ({reasons})"
        return f"{why}; {verdict}. Your vote was not counted.{follow}"

    # -- expiry ----------------------------------------------------------------------------

    async def expire(self, approval_id: str, action_id: str) -> bool:
        """Close a pending approval whose time ran out, with an ``expiry`` entry."""
        body = {"approval_id": approval_id, "action_id": action_id}

        def close(conn: Connection, appended: list[Appended]) -> None:
            entry = appended[0]
            moved = conn.execute(
                sa.update(APPROVALS)
                .where(APPROVALS.c.id == approval_id, APPROVALS.c.status == "pending")
                .values(status="expired", closed_at=entry.time, closed_reason="no quorum in time")
            )
            if moved.rowcount != 1:
                raise _Closed("settled")
            conn.execute(
                sa.update(ACTIONS).where(ACTIONS.c.id == action_id).values(status="expired")
            )
            conn.execute(sa.insert(EVENTS).values(_event(entry, action_id, "expiry")))
            mark_expired(conn, action_id)

        try:
            await self._ledger.append_many_async(
                [Record("expiry", "mandate", action_id, body)], in_transaction=close
            )
        except _Closed:
            return False
        self._autonomy.forget()  # the figures counted an expiry
        return True

    # -- withdrawal ------------------------------------------------------------------------

    async def withdraw(self, identity: Identity, action_id: str, reason: str) -> None:
        """The proposer takes back a held action (its caller stopped waiting, so nobody would
        carry it out): a ``withdrawal`` entry, the approval closed as ``withdrawn`` (out of the
        inbox; later votes get 409) and the action with it.

        Only the proposing token, or another of its standing, withdraws (Forbidden); an action
        that is not held, or whose approval closed meanwhile, is a Conflict."""
        with self._engine.connect() as conn:
            action = conn.execute(sa.select(ACTIONS).where(ACTIONS.c.id == action_id)).first()
            if action is None:
                raise NotFound(f"no action {action_id}")
            confine(identity, action.workflow, f"action {action_id}")
            row = conn.execute(
                sa.select(APPROVALS.c.id).where(
                    APPROVALS.c.action_id == action_id, APPROVALS.c.status == "pending"
                )
            ).first()
        if not may_act_for(self._ledger, identity, action.executor, action.proposal_seq):
            raise Forbidden(
                "only the token that proposed an action, or another of the same owner, role and "
                "workflow binding, withdraws it"
            )
        if row is None:
            raise Conflict(
                f"action {action_id} is {action.status}: only a held action is withdrawn"
            )
        body = {
            "action_id": action_id,
            "approval_id": row.id,
            "reason": reason,
            "executor": identity.to_json(),
        }

        def close(conn: Connection, appended: list[Appended]) -> None:
            entry = appended[0]
            moved = conn.execute(
                sa.update(APPROVALS)
                .where(APPROVALS.c.id == row.id, APPROVALS.c.status == "pending")
                .values(status="withdrawn", closed_at=entry.time, closed_reason=reason)
            )
            if moved.rowcount != 1:
                raise _Closed(
                    conn.execute(
                        sa.select(APPROVALS.c.status).where(APPROVALS.c.id == row.id)
                    ).scalar_one()
                )
            conn.execute(
                sa.update(ACTIONS).where(ACTIONS.c.id == action_id).values(status="withdrawn")
            )
            conn.execute(sa.insert(EVENTS).values(_event(entry, action_id, "withdrawal")))

        try:
            await self._ledger.append_many_async(
                [Record("withdrawal", identity.name, action_id, body)], in_transaction=close
            )
        except _Closed as exc:
            raise Conflict(
                f"approval {row.id} of action {action_id} is {exc.status}; it was not withdrawn"
            ) from None

    async def sweep(self) -> int:
        """Expire every pending approval past its time; return how many."""
        stamp = format_time(self._clock())
        with self._engine.connect() as conn:
            due = conn.execute(
                sa.select(APPROVALS.c.id, APPROVALS.c.action_id).where(
                    APPROVALS.c.status == "pending", APPROVALS.c.expires_at <= stamp
                )
            ).all()
        expired = 0
        for approval_id, action_id in due:
            expired += await self.expire(approval_id, action_id)
        return expired

    async def sweep_forever(self, interval: float, stop: asyncio.Event) -> None:
        """The background sweeper: expire what is due every ``interval`` seconds."""
        while not stop.is_set():
            try:
                await self.sweep()
            except Exception:  # the next sweep tries again; a failure must not end the loop
                log.exception("the expiry sweep failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)


_IDENTITY_FIELDS = ("token_id", "name", "role", "workflow", "owner")


def _as_view(row: Any, votes: list[Any]) -> ApprovalView:
    """An approval row and its votes as the API and the pages show them."""
    summary = _summary(row)
    return ApprovalView(
        id=row.id,
        action_id=row.action_id,
        workflow=row.workflow,
        case_type=row.case_type,
        status=row.status,
        quorum=row.quorum,
        approvals=sum(1 for v in votes if v.decision == "approve"),
        expires_at=row.expires_at,
        created_at=row.created_at,
        executor=summary["executor"],
        action_type=summary["action_type"],
        resource=summary["resource"],
        amount=summary.get("amount"),
        currency=summary.get("currency"),
        confidence=summary.get("confidence"),
        reasons=[Reason.model_validate(r) for r in summary["reasons"]],
        recommendation=summary["recommendation"],
        votes=[
            VoteView(voter=v.voter, decision=v.decision, reason=v.reason, seq=v.seq, time=v.time)
            for v in votes
        ],
        closed_reason=row.closed_reason,
    )


def _summary(row: Any) -> dict[str, Any]:
    summary = orjson.loads(row.summary)
    assert isinstance(summary, dict)
    return summary
