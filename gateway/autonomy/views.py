"""What people read of earned autonomy: each case type's level, figures, criteria, history and
chart series, and the promotions with their votes (``GET /v1/autonomy…``, the autonomy page).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from gateway.autonomy.figures import ZERO_FIGURES, WindowSpec
from gateway.autonomy.levels import LEVEL_NAMES, AutonomyBook
from gateway.binding import confine, confine_query
from gateway.db.tables import AUTONOMY_CHANGES, FIGURES, PROMOTION_VOTES, PROMOTIONS
from gateway.errors import InvalidInput, NotFound
from gateway.identity import Identity
from gateway.policy.active import ActivePolicy
from gateway.policy.bundle import Bundle
from gateway.schemas import (
    AutonomyChange,
    AutonomyDetail,
    AutonomyView,
    CriteriaView,
    DemotionView,
    Figures,
    PromotionView,
    SeriesPoint,
    VoteView,
    WindowView,
)
from ledger.entry import format_time

__all__ = ["SERIES_DAYS", "AutonomyViews", "promotion_row"]

SERIES_DAYS = 30  # days the chart shows, at least


def promotion_row(conn: Connection, promotion_id: str) -> Any:
    """A promotion's row, or NotFound."""
    row = conn.execute(sa.select(PROMOTIONS).where(PROMOTIONS.c.id == promotion_id)).first()
    if row is None:
        raise NotFound(f"no promotion {promotion_id}")
    return row


class AutonomyViews:
    """Reads levels, figures and promotions as the API and the pages show them."""

    def __init__(
        self,
        engine: Engine,
        *,
        policy: Callable[[], ActivePolicy],
        autonomy: AutonomyBook,
        clock: Callable[[], dt.datetime],
    ) -> None:
        """``policy`` gives the policy in force."""
        self._engine = engine
        self._policy = policy
        self._book = autonomy
        self._clock = clock

    def figures(self, spec: WindowSpec) -> dict[str, int]:
        """The figures of a window, as of now."""
        figures = self._book.figures
        if figures is None:
            return dict(ZERO_FIGURES)
        return figures.window(spec, self._clock())

    def _case_types(self, bundle: Bundle, workflow: str | None) -> list[tuple[str, str]]:
        keys = {
            (name, case_type)
            for name, config in bundle.workflows.items()
            for case_type in config.case_types
        }
        keys |= set(self._book.standings())
        with self._engine.connect() as conn:
            seen = conn.execute(
                sa.select(FIGURES.c.workflow, FIGURES.c.case_type).group_by(
                    FIGURES.c.workflow, FIGURES.c.case_type
                )
            ).all()
        keys |= {(row.workflow, row.case_type) for row in seen}
        return sorted(key for key in keys if workflow is None or key[0] == workflow)

    def overview(self, identity: Identity, workflow: str | None = None) -> list[AutonomyView]:
        """Every case type the caller may see, with its level and figures."""
        if workflow is not None:
            confine(identity, workflow, f"workflow {workflow!r}")
        workflow = workflow or identity.workflow
        bundle = self._policy().bundle
        if workflow is not None and workflow not in bundle.workflows:
            known = sorted({name for name, _ in self._case_types(bundle, None)})
            if workflow not in known:
                raise InvalidInput(
                    [("workflow", f"no workflow {workflow!r}; workflows: {', '.join(known)}")]
                )
        self._book.standings(fresh=True)
        pending = {(p.workflow, p.case_type): p for p in self.promotions(identity, "pending")}
        return [
            self._view(bundle, wf, ct, pending.get((wf, ct)))
            for wf, ct in self._case_types(bundle, workflow)
        ]

    def detail(self, identity: Identity, workflow: str, case_type: str) -> AutonomyDetail:
        """One case type with its changes and its figures day by day."""
        confine(identity, workflow, f"case type {workflow}/{case_type}")
        bundle = self._policy().bundle
        if workflow not in bundle.workflows and workflow not in {
            key[0] for key in self._case_types(bundle, workflow)
        }:
            raise NotFound(f"no workflow {workflow!r}")
        if (workflow, case_type) not in self._case_types(bundle, workflow):
            raise NotFound(f"no case type {case_type!r} in workflow {workflow!r}")
        self._book.standings(fresh=True)
        pending = [
            p
            for p in self.promotions(identity, "pending")
            if (p.workflow, p.case_type) == (workflow, case_type)
        ]
        view = self._view(bundle, workflow, case_type, pending[0] if pending else None)
        return AutonomyDetail(
            **dict(view),
            history=self.history(workflow, case_type),
            series=self.series(workflow, case_type),
        )

    def _view(
        self, bundle: Bundle, workflow: str, case_type: str, pending: PromotionView | None
    ) -> AutonomyView:
        book = self._book
        terms = book.terms(bundle, workflow, case_type)
        level, source = book.level(bundle, workflow, case_type)
        standing = book.standing(workflow, case_type)
        figures = self.figures(book.window(bundle, workflow, case_type, level))
        target = level + 1
        criteria = terms.criteria.get(target) if target <= terms.max_level else None
        promotion = None
        if criteria is not None:
            unmet = criteria.unmet(figures)
            promotion = CriteriaView(**criteria.to_json(), met=not unmet, unmet=unmet)
        return AutonomyView(
            workflow=workflow,
            case_type=case_type,
            level=level,
            name=LEVEL_NAMES[level],
            source=source,
            window=WindowView(
                decisions=terms.window_decisions,
                days=terms.window_days,
                since_seq=None if standing is None or standing.seq < 0 else standing.seq,
                since=None if standing is None or standing.seq < 0 else standing.changed_at,
            ),
            figures=Figures(**figures),
            audit_rate_bp=terms.audit_rate(level),
            promotion=promotion,
            demotion=DemotionView(
                **terms.demotion_json(), due=level > 1 and terms.demotion_due(figures)
            ),
            pending_promotion=pending,
        )

    def history(self, workflow: str, case_type: str, limit: int = 50) -> list[AutonomyChange]:
        """The case type's changes of level, newest first."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                sa.select(AUTONOMY_CHANGES)
                .where(
                    AUTONOMY_CHANGES.c.workflow == workflow,
                    AUTONOMY_CHANGES.c.case_type == case_type,
                )
                .order_by(AUTONOMY_CHANGES.c.seq.desc())
                .limit(limit)
            ).all()
        return [
            AutonomyChange(
                seq=row.seq,
                time=row.time,
                event=row.event,
                from_level=row.from_level,
                to_level=row.to_level,
                actor=row.actor,
                reason=row.reason,
                figures=Figures(**orjson.loads(row.figures)),
            )
            for row in rows
        ]

    def series(self, workflow: str, case_type: str) -> list[SeriesPoint]:
        """The case type's figures day by day (UTC days of the decisions), over the window's
        days or ``SERIES_DAYS``, whichever is longer: what the chart draws."""
        bundle = self._policy().bundle
        days = max(self._book.terms(bundle, workflow, case_type).window_days, SERIES_DAYS)
        cutoff = self._clock() - dt.timedelta(days=days)
        day = sa.func.substr(FIGURES.c.decided_at, 1, 10)
        error = sa.case(
            (
                FIGURES.c.overridden + FIGURES.c.failed + FIGURES.c.audit_incorrect
                + FIGURES.c.corrected > 0,
                1,
            ),
            else_=0,
        )  # fmt: skip
        checked = sa.case(
            (FIGURES.c.reviewed + FIGURES.c.executed + FIGURES.c.corrected > 0, 1), else_=0
        )
        query = (
            sa.select(
                day.label("day"),
                sa.func.count().label("decisions"),
                sa.func.sum(FIGURES.c.reviewed).label("reviewed"),
                sa.func.sum(FIGURES.c.agreed).label("agreed"),
                sa.func.sum(checked).label("checked"),
                sa.func.sum(error).label("errors"),
            )
            .where(
                FIGURES.c.workflow == workflow,
                FIGURES.c.case_type == case_type,
                FIGURES.c.decided_at >= format_time(cutoff),
            )
            .group_by(day)
            .order_by(day)
        )
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
        return [
            SeriesPoint(
                day=row.day,
                decisions=int(row.decisions),
                reviewed=int(row.reviewed or 0),
                agreement_bp=_ratio(row.agreed, row.reviewed),
                checked=int(row.checked or 0),
                error_bp=_ratio(row.errors, row.checked),
            )
            for row in rows
        ]

    def promotions(self, identity: Identity, status: str | None = "pending") -> list[PromotionView]:
        """Promotions, newest first (of the caller's workflow, for a token bound to one)."""
        query = sa.select(PROMOTIONS).order_by(PROMOTIONS.c.seq.desc()).limit(200)
        if status is not None:
            query = query.where(PROMOTIONS.c.status == status)
        query = confine_query(query, PROMOTIONS.c.workflow, identity)
        with self._engine.connect() as conn:
            return [self._promotion_view(conn, row) for row in conn.execute(query).all()]

    def promotion(self, promotion_id: str) -> PromotionView:
        """One promotion with its votes."""
        with self._engine.connect() as conn:
            return self._promotion_view(conn, promotion_row(conn, promotion_id))

    def _promotion_view(self, conn: Connection, row: Any) -> PromotionView:
        votes = conn.execute(
            sa.select(PROMOTION_VOTES)
            .where(PROMOTION_VOTES.c.promotion_id == row.id)
            .order_by(PROMOTION_VOTES.c.seq)
        ).all()
        return PromotionView(
            id=row.id,
            workflow=row.workflow,
            case_type=row.case_type,
            from_level=row.from_level,
            to_level=row.to_level,
            status=row.status,
            quorum=row.quorum,
            approvals=sum(1 for v in votes if v.decision == "approve"),
            figures=Figures(**orjson.loads(row.figures)),
            criteria=orjson.loads(row.criteria),
            created_at=row.created_at,
            seq=row.seq,
            votes=[
                VoteView(
                    voter=v.voter, decision=v.decision, reason=v.reason, seq=v.seq, time=v.time
                )
                for v in votes
            ],
            closed_at=row.closed_at,
            closed_reason=row.closed_reason,
        )


def _ratio(part: Any, whole: Any) -> int | None:
    """part × 10000 ÷ whole in basis points; None when there is nothing to divide by."""
    return int(part) * 10_000 // int(whole) if whole else None
