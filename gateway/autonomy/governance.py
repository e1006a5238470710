"""Earned autonomy: a case type's level changes only through ledgered events.

- **Review** (``review``), after every event that judges an action of a case type (a vote that
  closes an approval, an outcome, an audit finding, a correction): when the error rate of the
  window crosses the policy's threshold, the level drops one step at once (``demotion``) and
  people are notified; otherwise, when the figures meet the entry criteria of the next level
  and no promotion is pending, the gateway proposes one (``promotion_proposed``).
- **Promotion** takes effect only when governors approve it: each vote is an ``approval`` or
  ``rejection`` entry whose subject is the promotion's id; the vote that reaches the quorum
  (policy data) writes the ``promotion`` in the same transaction; one rejection rejects, and
  then only decisions made after the rejected proposal count toward the next proposal.
- **Set** by hand: a governor sets any level 1..4 with a reason.

Every change is an ``autonomy`` entry (subject ``<workflow>/<case type>``) with the figures that
justified it; it updates ``gateway_autonomy`` in the same transaction, which checks that the
level is still the one the change started from (two processes cannot both demote), and it
starts a new window. Pending promotions of the case type are superseded by any other change.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from gateway.autonomy.figures import WindowSpec
from gateway.autonomy.levels import LEVEL_NAMES, AutonomyBook
from gateway.autonomy.terms import Criteria, Terms, bp
from gateway.autonomy.views import AutonomyViews, promotion_row
from gateway.binding import confine, reaches
from gateway.db.tables import (
    AUTONOMY,
    AUTONOMY_CHANGES,
    PROMOTION_VOTES,
    PROMOTIONS,
)
from gateway.errors import Conflict, Forbidden, InvalidInput, NotFound
from gateway.identity import Identity
from gateway.policy.active import ActivePolicy
from gateway.policy.bundle import Bundle
from gateway.schemas import (
    AutonomyDetail,
    LevelRequest,
    PromotionView,
    VoteRequest,
)
from ledger.store import Appended, Ledger, Record

__all__ = ["Governance"]

_ATTEMPTS = 5  # tries of a vote whose count another process changed meanwhile


class _Stale(Exception):
    """The level (or the promotion) changed since it was read: another process got there."""


class _Closed(Exception):
    """The promotion was settled between the check and the vote."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


class _Recount(Exception):
    """Another governor's vote landed between the count and this vote: count again."""


Notify = Callable[[dict[str, Any]], None]


class Governance:
    """Reviews figures, proposes and applies promotions, demotes, and sets levels by hand."""

    def __init__(
        self,
        engine: Engine,
        ledger: Ledger,
        *,
        policy: Callable[[], ActivePolicy],
        autonomy: AutonomyBook,
        clock: Callable[[], dt.datetime],
        new_id: Callable[[str], str],
        views: AutonomyViews,
        notify: Notify | None = None,
    ) -> None:
        """``policy`` gives the policy in force; ``new_id`` makes promotion ids; ``views``
        reads what a change answers with."""
        self._engine = engine
        self._ledger = ledger
        self._policy = policy
        self._book = autonomy
        self._clock = clock
        self._new_id = new_id
        self._views = views
        self._notify = notify

    # -- who may ---------------------------------------------------------------------------

    def may_govern(self, identity: Identity, workflow: str, case_type: str) -> bool:
        """Whether Casbin lets this caller govern the case type (``govern`` in the workflow)."""
        if not reaches(identity, workflow):
            return False
        permitter = self._policy().permitter
        return permitter.permit(identity.role, workflow, case_type, "govern").allowed

    def _check_govern(self, identity: Identity, workflow: str, case_type: str) -> None:
        confine(identity, workflow, f"case type {workflow}/{case_type}")
        if not self.may_govern(identity, workflow, case_type):
            raise Forbidden(
                f"role {identity.role!r} may not govern {case_type} in workflow {workflow!r}"
            )

    # -- the level in force, inside a ledger transaction -------------------------------------

    @staticmethod
    def _current(
        conn: Connection, bundle: Bundle, workflow: str, case_type: str
    ) -> tuple[int, int]:
        """(level, seq of the entry that set it, or -1 for the bundle's initial level)."""
        row = conn.execute(
            sa.select(AUTONOMY.c.level, AUTONOMY.c.seq).where(
                AUTONOMY.c.workflow == workflow, AUTONOMY.c.case_type == case_type
            )
        ).first()
        if row is not None:
            return int(row.level), int(row.seq)
        config = bundle.workflows.get(workflow)
        return (config.initial_level(case_type) if config else 1), -1

    @staticmethod
    def _apply(
        conn: Connection,
        entry: Appended,
        body: dict[str, Any],
        *,
        keep: str | None = None,
    ) -> None:
        """Put a change recorded by ``entry`` (an ``autonomy`` entry with ``body``) in force:
        the level, the history, and pending promotions superseded."""
        workflow, case_type = body["workflow"], body["case_type"]
        where = (AUTONOMY.c.workflow == workflow, AUTONOMY.c.case_type == case_type)
        values = {
            "level": body["to_level"],
            "reason": f"{body['event']}: {body['reason']}"[:2000],
            "changed_at": entry.time,
            "seq": entry.seq,
        }
        moved = conn.execute(sa.update(AUTONOMY).where(*where).values(**values))
        if moved.rowcount == 0:
            conn.execute(
                sa.insert(AUTONOMY).values(workflow=workflow, case_type=case_type, **values)
            )
        conn.execute(
            sa.insert(AUTONOMY_CHANGES).values(
                seq=entry.seq,
                workflow=workflow,
                case_type=case_type,
                event=body["event"],
                from_level=body["from_level"],
                to_level=body["to_level"],
                actor=body["actor"] if isinstance(body["actor"], str) else body["actor"]["name"],
                reason=body["reason"],
                time=entry.time,
                figures=orjson.dumps(body["figures"]),
            )
        )
        pending = sa.and_(
            PROMOTIONS.c.workflow == workflow,
            PROMOTIONS.c.case_type == case_type,
            PROMOTIONS.c.status == "pending",
        )
        if keep is not None:
            pending = sa.and_(pending, PROMOTIONS.c.id != keep)
        conn.execute(
            sa.update(PROMOTIONS)
            .where(pending)
            .values(
                status="superseded",
                closed_at=entry.time,
                closed_reason=f"the level changed by {body['event']} (ledger #{entry.seq})",
            )
        )

    def _body(
        self,
        event: str,
        workflow: str,
        case_type: str,
        from_level: int,
        to_level: int,
        *,
        actor: Identity | None,
        reason: str,
        figures: dict[str, int],
        spec: WindowSpec,
        terms: Terms,
        **more: Any,
    ) -> dict[str, Any]:
        return {
            "event": event,
            "workflow": workflow,
            "case_type": case_type,
            "from_level": from_level,
            "to_level": to_level,
            "reason": reason,
            "actor": "mandate" if actor is None else actor.to_json(),
            "figures": figures,
            "window": terms.window_json() | {"since_seq": spec.since},
            **more,
        }

    async def _change(
        self, body: dict[str, Any], since: int, *, actor: Identity | None
    ) -> Appended:
        """Record and apply a change, if the level is still ``from_level`` set at ``since``."""
        workflow, case_type = body["workflow"], body["case_type"]
        bundle = self._policy().bundle

        def apply(conn: Connection, appended: list[Appended]) -> None:
            current = self._current(conn, bundle, workflow, case_type)
            if current != (body["from_level"], since):
                raise _Stale(f"{workflow}/{case_type} is at {current}")
            self._apply(conn, appended[0], body)

        record = Record(
            "autonomy", "mandate" if actor is None else actor.name, f"{workflow}/{case_type}", body
        )
        try:
            appended = await self._ledger.append_many_async([record], in_transaction=apply)
        finally:
            self._book.forget(workflow, case_type)
        return appended[0]

    # -- review: demote, or propose a promotion ----------------------------------------------

    async def review(self, workflow: str, case_type: str) -> None:
        """Demote when the window's error rate crossed the threshold; else propose a promotion
        when the next level's entry criteria are met."""
        if self._book.figures is None:
            return
        bundle = self._policy().bundle
        terms = self._book.terms(bundle, workflow, case_type)
        self._book.standings(fresh=True)
        level, _ = self._book.level(bundle, workflow, case_type)
        spec = self._book.window(bundle, workflow, case_type, level)
        figures = self._views.figures(spec)
        if level > 1 and terms.demotion_due(figures):
            await self._demote(workflow, case_type, level, spec, terms, figures)
            return
        target = level + 1
        criteria = terms.criteria.get(target)
        if target > terms.max_level or criteria is None or criteria.unmet(figures):
            return
        with self._engine.connect() as conn:
            case = (PROMOTIONS.c.workflow == workflow, PROMOTIONS.c.case_type == case_type)
            pending = conn.execute(
                sa.select(PROMOTIONS.c.id).where(*case, PROMOTIONS.c.status == "pending")
            ).first()
            rejected = conn.execute(
                sa.select(sa.func.max(PROMOTIONS.c.seq)).where(
                    *case,
                    PROMOTIONS.c.status == "rejected",
                    PROMOTIONS.c.to_level == target,
                    PROMOTIONS.c.seq > spec.since,
                )
            ).scalar()
        if pending is not None:
            return
        if rejected is not None:
            # Governors said no: only what was decided after that proposal counts now.
            since_rejection = WindowSpec(
                workflow, case_type, level, int(rejected), spec.size, spec.days
            )
            figures = self._views.figures(since_rejection)
            if criteria.unmet(figures):
                return
        await self._propose(workflow, case_type, level, target, spec, terms, criteria, figures)

    async def _demote(
        self,
        workflow: str,
        case_type: str,
        level: int,
        spec: WindowSpec,
        terms: Terms,
        figures: dict[str, int],
    ) -> None:
        reason = (
            f"error rate {bp(figures['error_bp'])} ({figures['errors']} of "
            f"{figures['checked']} checked) is over the threshold of "
            f"{bp(terms.demotion_max_error_bp)}"
        )
        body = self._body(
            "demotion",
            workflow,
            case_type,
            level,
            level - 1,
            actor=None,
            reason=reason,
            figures=figures,
            spec=spec,
            terms=terms,
            threshold=terms.demotion_json(),
        )
        try:
            entry = await self._change(body, spec.since, actor=None)
        except _Stale:
            return  # another process changed the level first
        self._tell(
            f"Autonomy lowered: {workflow} {case_type} from level {level} "
            f"({LEVEL_NAMES[level]}) to {level - 1} ({LEVEL_NAMES[level - 1]})",
            workflow,
            case_type,
            [reason, f"ledger #{entry.seq}"],
        )

    async def _propose(
        self,
        workflow: str,
        case_type: str,
        level: int,
        target: int,
        spec: WindowSpec,
        terms: Terms,
        criteria: Criteria,
        figures: dict[str, int],
    ) -> None:
        promotion_id = self._new_id("prm")
        bundle = self._policy().bundle
        body = {
            "event": "promotion_proposed",
            "promotion_id": promotion_id,
            "workflow": workflow,
            "case_type": case_type,
            "from_level": level,
            "to_level": target,
            "quorum": terms.quorum,
            "figures": figures,
            "criteria": criteria.to_json(),
            "window": terms.window_json() | {"since_seq": spec.since},
        }

        def open_(conn: Connection, appended: list[Appended]) -> None:
            entry = appended[0]
            if self._current(conn, bundle, workflow, case_type) != (level, spec.since):
                raise _Stale("the level changed")
            pending = conn.execute(
                sa.select(PROMOTIONS.c.id).where(
                    PROMOTIONS.c.workflow == workflow,
                    PROMOTIONS.c.case_type == case_type,
                    PROMOTIONS.c.status == "pending",
                )
            ).first()
            if pending is not None:
                raise _Stale("a promotion is pending already")
            conn.execute(
                sa.insert(PROMOTIONS).values(
                    id=promotion_id,
                    workflow=workflow,
                    case_type=case_type,
                    from_level=level,
                    to_level=target,
                    status="pending",
                    quorum=terms.quorum,
                    seq=entry.seq,
                    created_at=entry.time,
                    figures=orjson.dumps(figures),
                    criteria=orjson.dumps(criteria.to_json()),
                    closed_at=None,
                    closed_reason=None,
                )
            )

        record = Record("autonomy", "mandate", f"{workflow}/{case_type}", body)
        try:
            await self._ledger.append_many_async([record], in_transaction=open_)
        except _Stale:
            return
        self._tell(
            f"Promotion proposed: {workflow} {case_type} from level {level} to {target} "
            f"({LEVEL_NAMES[target]}); {terms.quorum} governor approval"
            f"{'s' if terms.quorum != 1 else ''} needed",
            workflow,
            case_type,
            [
                f"reviewed {figures['reviewed']}, agreement {bp(figures['agreement_bp'])}, "
                f"failures {bp(figures['failure_bp'])}, errors {bp(figures['error_bp'])}",
                f"promotion {promotion_id}",
            ],
        )

    def _tell(self, title: str, workflow: str, case_type: str, reasons: list[str]) -> None:
        if self._notify is not None:
            self._notify(
                {"title": title, "workflow": workflow, "case_type": case_type, "reasons": reasons}
            )

    # -- governors' votes on promotions ----------------------------------------------------

    async def decide(
        self, identity: Identity, promotion_id: str, vote: VoteRequest
    ) -> PromotionView:
        """A governor's vote: one rejection rejects; the vote that reaches quorum promotes."""
        with self._engine.connect() as conn:
            row = promotion_row(conn, promotion_id)
            earlier = conn.execute(
                sa.select(PROMOTION_VOTES.c.decision).where(
                    PROMOTION_VOTES.c.promotion_id == promotion_id,
                    PROMOTION_VOTES.c.voter_owner == identity.owner,
                )
            ).scalar()
        confine(identity, row.workflow, f"promotion {promotion_id}")
        self._check_govern(identity, row.workflow, row.case_type)
        if vote.decision == "reject" and not vote.reason.strip():
            raise InvalidInput([("reason", "a reason is required to reject")])
        if earlier is not None and row.status in ("pending", "approved", "rejected"):
            if earlier == vote.decision:
                return self._views.promotion(promotion_id)
            raise Conflict(f"you already voted {earlier} on promotion {promotion_id}")
        if row.status != "pending":
            raise Conflict(f"promotion {promotion_id} is {row.status}; it takes no more votes")
        for _ in range(_ATTEMPTS):
            try:
                promoted = await self._vote(identity, row, vote)
            except _Recount:
                continue
            except _Closed as exc:
                raise Conflict(
                    f"promotion {promotion_id} is {exc.status}; your vote was not counted"
                ) from None
            except sa.exc.IntegrityError:
                break  # the same vote arrived twice at once
            if promoted is not None:
                self._tell(
                    f"Autonomy raised: {row.workflow} {row.case_type} from level "
                    f"{row.from_level} to {row.to_level} ({LEVEL_NAMES[row.to_level]})",
                    row.workflow,
                    row.case_type,
                    [f"promotion {promotion_id} approved", f"ledger #{promoted.seq}"],
                )
            break
        else:
            raise Conflict(f"votes on promotion {promotion_id} kept arriving; try again")
        return self._views.promotion(promotion_id)

    async def _vote(self, identity: Identity, row: Any, vote: VoteRequest) -> Appended | None:
        """Record one vote; returns the ``promotion`` entry if this vote reached quorum."""
        with self._engine.connect() as conn:
            before = self._approvals(conn, row.id)
        reaches = vote.decision == "approve" and before + 1 >= row.quorum
        kind = "approval" if vote.decision == "approve" else "rejection"
        records = [
            Record(
                kind,
                identity.name,
                row.id,
                {
                    "promotion_id": row.id,
                    "workflow": row.workflow,
                    "case_type": row.case_type,
                    "decision": vote.decision,
                    "reason": vote.reason,
                    "voter": identity.to_json(),
                    "quorum": row.quorum,
                },
            )
        ]
        bundle = self._policy().bundle
        change: dict[str, Any] = {}
        if reaches:
            terms = self._book.terms(bundle, row.workflow, row.case_type)
            change = {
                "event": "promotion",
                "workflow": row.workflow,
                "case_type": row.case_type,
                "from_level": row.from_level,
                "to_level": row.to_level,
                "reason": f"promotion {row.id} approved by a quorum of {row.quorum}",
                "actor": identity.to_json(),
                "figures": orjson.loads(row.figures),
                "criteria": orjson.loads(row.criteria),
                "window": terms.window_json(),
                "promotion_id": row.id,
                "proposed_seq": row.seq,
            }
            records.append(
                Record("autonomy", identity.name, f"{row.workflow}/{row.case_type}", change)
            )

        def count(conn: Connection, appended: list[Appended]) -> None:
            entry = appended[0]
            status = conn.execute(
                sa.select(PROMOTIONS.c.status).where(PROMOTIONS.c.id == row.id)
            ).scalar_one()
            if status != "pending":
                raise _Closed(status)
            if self._approvals(conn, row.id) != before:
                raise _Recount()
            conn.execute(
                sa.insert(PROMOTION_VOTES).values(
                    promotion_id=row.id,
                    voter_owner=identity.owner,
                    voter=identity.name,
                    decision=vote.decision,
                    reason=vote.reason,
                    seq=entry.seq,
                    time=entry.time,
                )
            )
            if vote.decision == "reject":
                self._close(conn, row.id, "rejected", vote.reason, entry.time)
            elif reaches:
                current = self._current(conn, bundle, row.workflow, row.case_type)
                if current[0] != row.from_level:
                    raise _Closed("superseded")
                self._close(conn, row.id, "approved", f"quorum of {row.quorum}", entry.time)
                self._apply(conn, appended[1], change, keep=row.id)

        try:
            appended = await self._ledger.append_many_async(records, in_transaction=count)
        finally:
            if reaches:
                self._book.forget(row.workflow, row.case_type)
        return appended[1] if reaches else None

    @staticmethod
    def _approvals(conn: Connection, promotion_id: str) -> int:
        return int(
            conn.execute(
                sa.select(sa.func.count())
                .select_from(PROMOTION_VOTES)
                .where(
                    PROMOTION_VOTES.c.promotion_id == promotion_id,
                    PROMOTION_VOTES.c.decision == "approve",
                )
            ).scalar_one()
        )

    @staticmethod
    def _close(conn: Connection, promotion_id: str, status: str, reason: str, when: str) -> None:
        conn.execute(
            sa.update(PROMOTIONS)
            .where(PROMOTIONS.c.id == promotion_id)
            .values(status=status, closed_at=when, closed_reason=reason)
        )

    # -- set by hand -----------------------------------------------------------------------

    async def set_level(
        self, identity: Identity, workflow: str, case_type: str, request: LevelRequest
    ) -> AutonomyDetail:
        """A governor sets the level, with a reason; the figures at that moment are recorded."""
        bundle = self._policy().bundle
        if workflow not in bundle.workflows:
            known = ", ".join(sorted(bundle.workflows)) or "none"
            raise NotFound(f"no workflow {workflow!r}; known: {known}")
        self._check_govern(identity, workflow, case_type)
        known_types = bundle.workflows[workflow].case_types
        if case_type not in known_types:
            raise InvalidInput(
                [
                    (
                        "case_type",
                        f"the active bundle has no case type {case_type!r} in {workflow}; "
                        f"it has {', '.join(sorted(known_types))}",
                    )
                ]
            )
        if not request.reason.strip():
            raise InvalidInput([("reason", "say why the level changes")])
        terms = self._book.terms(bundle, workflow, case_type)
        self._book.standings(fresh=True)
        level, _ = self._book.level(bundle, workflow, case_type)
        if request.level == level:
            raise Conflict(f"{workflow}/{case_type} is at level {level} already")
        spec = self._book.window(bundle, workflow, case_type, level)
        body = self._body(
            "set",
            workflow,
            case_type,
            level,
            request.level,
            actor=identity,
            reason=request.reason,
            figures=self._views.figures(spec),
            spec=spec,
            terms=terms,
        )
        try:
            await self._change(body, spec.since, actor=identity)
        except _Stale:
            raise Conflict(
                f"the level of {workflow}/{case_type} changed just now; look again"
            ) from None
        return self._views.detail(identity, workflow, case_type)
