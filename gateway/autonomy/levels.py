"""Autonomy levels per (workflow, case type): the level in force, where it came from, and the
figures of its window that a decision sees.

The levels are the seed's: 1 advisory (every permitted action is held), 2 supervised, 3
conditional, 4 full. A case type starts at its bundle's ``initial_level``; promotions,
demotions and governors change it (``gateway.autonomy.governance``), and ``gateway_autonomy``
holds what they set.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from gateway.autonomy.figures import ZERO_FIGURES, FigureBook, Standing, WindowSpec
from gateway.autonomy.sampling import sampled
from gateway.autonomy.terms import Terms, terms_for
from gateway.db.tables import AUTONOMY, FIGURES
from gateway.errors import DecisionUnavailable
from gateway.policy.bundle import Bundle, BundleError

__all__ = ["LEVEL_NAMES", "AutonomyBook"]

LEVEL_NAMES = {1: "advisory", 2: "supervised", 3: "conditional", 4: "full"}
log = logging.getLogger("mandate")


_STANDINGS = sa.select(
    AUTONOMY.c.workflow, AUTONOMY.c.case_type, AUTONOMY.c.level, AUTONOMY.c.seq,
    AUTONOMY.c.reason, AUTONOMY.c.changed_at,
)  # fmt: skip
_CASE_OF = sa.select(FIGURES.c.workflow, FIGURES.c.case_type).where(
    FIGURES.c.action_id == sa.bindparam("action_id")
)
_EVENTS = ("promotion", "demotion", "set")


class AutonomyBook:
    """Autonomy levels per (workflow, case type), and the measured figures of the level in force.

    A case type runs at its bundle's initial level until a promotion, a demotion or a governor
    changes it; then ``gateway_autonomy`` holds its level and the ledger entry that set it
    (where the window of its figures starts). Every process reads that table through a cache
    that lives ``ttl`` seconds and is dropped when this process changes a level, so a change
    made on one gateway is in force on all of them within ``ttl``. ``figures`` reads and keeps
    the figures; without it (None) every decision sees zeros and none are kept. ``reviewer``
    (set by the runtime, once governance exists) is awaited after each event that judges an
    action, to promote or demote.
    """

    def __init__(
        self, engine: Engine, *, figures: FigureBook | None = None, ttl: float = 1.0
    ) -> None:
        self._engine = engine
        self.figures = figures
        self.ttl = ttl
        self._standings: dict[tuple[str, str], Standing] = {}
        self._read_at = -math.inf
        self.reviewer: Callable[[str, str], Awaitable[None]] | None = None

    def standings(self, *, fresh: bool = False) -> dict[tuple[str, str], Standing]:
        """Every case type whose level was changed, by (workflow, case type)."""
        clock = time.monotonic()
        if fresh or clock - self._read_at >= self.ttl:
            with self._engine.connect() as conn:
                rows = conn.execute(_STANDINGS).all()
            self._standings = {
                (row.workflow, row.case_type): Standing(
                    row.level, row.seq, _event_of(row.reason), row.changed_at
                )
                for row in rows
            }
            self._read_at = clock
        return self._standings

    def standing(self, workflow: str, case_type: str, *, fresh: bool = False) -> Standing | None:
        """The case type's changed level and since when; None while it runs at the initial
        level."""
        return self.standings(fresh=fresh).get((workflow, case_type))

    def level(self, bundle: Bundle, workflow: str, case_type: str) -> tuple[int, str]:
        """The level in force and where it comes from."""
        standing = self.standing(workflow, case_type)
        if standing is not None:
            return standing.level, f"{standing.event} at ledger #{standing.seq}"
        config = bundle.workflows.get(workflow)
        initial = config.initial_level(case_type) if config else 1
        return initial, "bundle initial level"

    def terms(self, bundle: Bundle, workflow: str, case_type: str) -> Terms:
        """The bundle's autonomy terms for the case type; a malformed bundle fails closed."""
        try:
            return terms_for(bundle, workflow, case_type)
        except BundleError as exc:
            raise DecisionUnavailable(f"the bundle's autonomy terms are unusable: {exc}") from exc

    def window(
        self, bundle: Bundle, workflow: str, case_type: str, level: int, *, fresh: bool = False
    ) -> WindowSpec:
        """The window the figures of ``level`` are counted over."""
        terms = self.terms(bundle, workflow, case_type)
        standing = self.standing(workflow, case_type, fresh=fresh)
        since = standing.seq if standing is not None and standing.level == level else -1
        return WindowSpec(
            workflow, case_type, level, since, terms.window_decisions, terms.window_days
        )

    def stats(
        self, bundle: Bundle, workflow: str, case_type: str, level: int, moment: dt.datetime
    ) -> dict[str, int]:
        """The figures a decision at ``level`` sees (``input.stats``), through the cache."""
        if self.figures is None:
            return dict(ZERO_FIGURES)
        return self.figures.cached(self.window(bundle, workflow, case_type, level), moment)

    def audit(
        self,
        bundle: Bundle,
        workflow: str,
        case_type: str,
        level: int,
        verdict: str,
        action_id: str,
    ) -> dict[str, Any] | None:
        """For an executed action: the level's audit rate and whether the action is in the
        sample (``gateway.autonomy.sampling.sampled``), as its decision entry records them."""
        if verdict != "execute":
            return None
        rate = self.terms(bundle, workflow, case_type).audit_rate(level)
        return {"rate_bp": rate, "sampled": sampled(action_id, rate)}

    def decided(self, workflow: str, case_type: str, verdict: str, *, warned: bool = False) -> None:
        """This process recorded a decision: count it in the cached figures."""
        if self.figures is not None:
            self.figures.bump(workflow, case_type, verdict, warned=warned)

    def forget(self, workflow: str | None = None, case_type: str | None = None) -> None:
        """Read levels and figures from the database next time (after a local change)."""
        self._read_at = -math.inf
        if self.figures is not None:
            self.figures.forget(workflow, case_type)

    async def after(self, workflow: str, case_type: str) -> None:
        """An event judged an action of this case type: drop its cached figures and let the
        reviewer promote or demote. A failing review is logged: the event stands recorded."""
        if self.figures is not None:
            self.figures.forget(workflow, case_type)
        if self.reviewer is None:
            return
        try:
            await self.reviewer(workflow, case_type)
        except Exception:
            log.exception("the autonomy review of %s/%s failed", workflow, case_type)

    async def after_action(self, action_id: str) -> None:
        """``after`` for the case type of an action (once its outcome is recorded)."""
        if self.figures is None:
            return
        try:
            with self._engine.connect() as conn:
                row = conn.execute(_CASE_OF, {"action_id": action_id}).first()
        except Exception:
            log.exception("the case type of %s could not be read for its review", action_id)
            return
        if row is not None:
            await self.after(row.workflow, row.case_type)


def _event_of(reason: str) -> str:
    """The event a ``gateway_autonomy`` reason names (``promotion: ...``)."""
    event = reason.split(":", 1)[0]
    return event if event in _EVENTS else "set"
