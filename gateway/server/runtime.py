"""Everything a running gateway holds, assembled once at start and handed to every request."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy.engine import Engine

from adapters.base import Adapter, Notifier, close_adapters, load_factories
from gateway.approvals.votes import Approvals
from gateway.autonomy.audits import Audits
from gateway.autonomy.figures import FigureBook
from gateway.autonomy.governance import Governance
from gateway.autonomy.levels import AutonomyBook
from gateway.autonomy.views import AutonomyViews
from gateway.db.connect import open_engine, open_ledger, witness_keys
from gateway.db.migrations import ensure_schema
from gateway.decision.answer import DecisionMade
from gateway.decision.decider import Decider
from gateway.decision.history import HistoryBook
from gateway.execution.dispatcher import Dispatcher, payload_for
from gateway.execution.exceptions import Exceptions
from gateway.execution.routing import Routing, load_webhook_secret
from gateway.identity import TokenBook
from gateway.lifecycle.activation import PolicyLifecycle
from gateway.logs import log_decision
from gateway.metrics import DatabaseState, Metrics
from gateway.policy.active import InForce, load_policy
from gateway.server.custody import Custody
from gateway.server.notices import Notices
from gateway.settings import Settings
from ledger.cosignature import CosignatureVerifier
from ledger.store import Ledger

__all__ = ["Runtime"]

log = logging.getLogger("mandate.custody")


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class Runtime:
    """The process's dependencies, assembled once by ``start``: services receive what they
    need (the ledger, the clock, a getter of the policy in force), never each other."""

    settings: Settings
    engine: Engine
    ledger: Ledger
    tokens: TokenBook
    clock: Callable[[], dt.datetime]
    in_force: InForce
    decider: Decider
    approvals: Approvals
    exceptions: Exceptions
    audits: Audits
    governance: Governance
    autonomy_views: AutonomyViews
    dispatcher: Dispatcher
    policies: PolicyLifecycle
    notices: Notices
    metrics: Metrics
    witnesses: tuple[CosignatureVerifier, ...] = ()
    custody: Custody | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    def start(
        cls, settings: Settings, *, clock: Callable[[], dt.datetime] | None = None
    ) -> Runtime:
        """Bring the database's schema to head (or refuse, with auto_migrate off), then open
        the ledger (signing key made on first start) and the policy, and assemble the rest."""
        clock = clock or _utcnow
        witnesses = witness_keys(settings)
        engine = open_engine(settings)
        try:
            ensure_schema(engine, auto_migrate=settings.auto_migrate)
        except BaseException:
            engine.dispose()
            raise
        # Before the ledger writes anything: is this database the log this data dir kept?
        custody = Custody(settings.data_dir)
        try:
            fault = custody.check(Ledger(engine, origin=settings.ledger_origin))
        except BaseException:
            engine.dispose()
            raise
        ledger = open_ledger(settings, engine, halted=fault)
        # The active bundle is the database's, shared by every process
        # (gateway.lifecycle.activation); a database refused above gets none written into it.
        lifecycle = PolicyLifecycle(settings, engine, ledger)
        try:
            if fault is None:
                in_force = InForce(lifecycle.bootstrap())
                # Kept from the first start on: a database dropped a moment later is caught.
                ledger.checkpoint()
                custody.keep(ledger)
            else:
                in_force = InForce(load_policy(settings.policies, settings.opa_url), fault)
        except BaseException:
            ledger.close()
            engine.dispose()
            raise
        lifecycle.attach(in_force)
        # Levels and figures are read from the database (short caches), so every process
        # sees a change another one made.
        autonomy = AutonomyBook(engine, figures=FigureBook(engine))
        routing = Routing(settings.webhooks)
        factories = load_factories()
        secret = load_webhook_secret(settings.webhook_secret, settings.webhook_secret_path)
        adapters = {
            "webhook": factories["webhook"](
                {"secret": secret, "timeout": settings.dispatch_timeout}
            ),
            "callback": factories["callback"]({}),
        }

        async def after_outcome(action_id: str) -> None:
            # The figures moved; a failure was handed to people, who are told.
            await autonomy.after_action(action_id)
            opened = await asyncio.to_thread(exceptions.opened, action_id)
            if opened is not None:
                notices.exception(opened)

        dispatcher = Dispatcher(
            engine,
            ledger,
            {name: a for name, a in adapters.items() if isinstance(a, Adapter)},
            payload=lambda action_id: payload_for(engine, ledger, action_id),
            attempts=settings.dispatch_attempts,
            backoff=settings.dispatch_backoff,
            lease=settings.dispatch_lease,
            clock=clock,
            on_outcome=after_outcome,
        )
        notifier = None
        if settings.notify_url:
            made = factories["notify"]({"url": settings.notify_url})
            notifier = made if isinstance(made, Notifier) else None
        notices = Notices(settings, notifier)
        metrics = Metrics()

        def decided(made: DecisionMade) -> None:
            metrics.decided(made)
            log_decision(made)

        decider = Decider(
            engine,
            ledger,
            in_force,
            autonomy,
            routing=routing,
            on_hold=notices.hold,
            on_execute=dispatcher.wake,
            clock=clock,
            shadow=lifecycle.shadow.offer,
            history=HistoryBook(engine),
            on_decided=decided,
        )
        approvals = Approvals(
            engine,
            ledger,
            policy=in_force.get,
            autonomy=autonomy,
            routing=routing,
            judgement=decider.judgement,
            clock=clock,
            wake_dispatcher=dispatcher.wake,
        )
        exceptions = Exceptions(
            engine,
            ledger,
            policy=in_force.get,
            autonomy=autonomy,
            clock=clock,
            wake_dispatcher=dispatcher.wake,
        )
        views = AutonomyViews(engine, policy=in_force.get, autonomy=autonomy, clock=clock)
        governance = Governance(
            engine,
            ledger,
            policy=in_force.get,
            autonomy=autonomy,
            clock=clock,
            new_id=decider.new_id,
            views=views,
            notify=notices.announce,
        )
        # The book asks governance to review after each event that judges an action, and
        # governance reads levels from the book: the one loop, closed here.
        autonomy.reviewer = governance.review
        audits = Audits(engine, ledger, policy=in_force.get, autonomy=autonomy)
        metrics.follow(
            DatabaseState(
                engine,
                ledger,
                bundle=lambda: in_force.policy.bundle,
                levels=lambda: {key: s.level for key, s in autonomy.standings().items()},
                clock=clock,
            )
        )
        return cls(
            settings=settings,
            engine=engine,
            ledger=ledger,
            tokens=TokenBook(engine),
            clock=clock,
            in_force=in_force,
            decider=decider,
            approvals=approvals,
            exceptions=exceptions,
            audits=audits,
            governance=governance,
            autonomy_views=views,
            dispatcher=dispatcher,
            policies=lifecycle,
            notices=notices,
            metrics=metrics,
            witnesses=witnesses,
            custody=custody,
        )

    def start_background(self) -> None:
        """Start the dispatcher and the expiry sweeper on the running event loop, and the
        custody watch; a database refused at start (``Custody``) gets the watch alone."""
        self._tasks = [asyncio.create_task(self._watch_custody(), name="custody")]
        if self.ledger.halted is not None:
            return
        self._tasks += [
            asyncio.create_task(self.dispatcher.run(), name="dispatcher"),
            asyncio.create_task(
                self.approvals.sweep_forever(self.settings.sweep_interval, self._stop),
                name="expiry-sweeper",
            ),
        ]
        self.policies.shadow.start()
        self._tasks.append(
            asyncio.create_task(
                self.policies.watch_forever(self.settings.policy_poll_interval, self._stop),
                name="policy-watcher",
            )
        )

    async def _watch_custody(self) -> None:
        """At every checkpoint interval, keep the latest checkpoint, or halt on a database
        that no longer extends the kept one (``Custody``)."""
        while not self._stop.is_set():
            if await asyncio.to_thread(self.follow_custody):
                self.dispatcher.stop()  # on the loop: nothing more is carried out
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.settings.checkpoint_interval)

    def follow_custody(self) -> bool:
        """Check the database's ledger against the kept checkpoint; keep its latest, or halt
        the ledger. Whether it halted it now."""
        custody = self.custody
        if custody is None:
            return False
        try:
            fault = custody.check(self.ledger)
            if fault is None:
                custody.keep(self.ledger)
        except Exception as exc:  # the database away: readiness says so; try again next time
            log.warning("cannot check the ledger against the kept checkpoint: %s", exc)
            return False
        if fault is None or self.ledger.halted is not None:
            return False
        self.in_force.unavailable = fault
        self.ledger.halt(fault)
        return True

    async def stop_background(self) -> None:
        """Stop the background work, letting attempts in flight finish."""
        self._stop.set()
        self.dispatcher.stop()
        await asyncio.gather(*self._tasks, self.notices.drain(), return_exceptions=True)
        await asyncio.to_thread(self.policies.shadow.stop)
        # Adapters release what they hold (the webhook's connections) once nothing uses them.
        await close_adapters([*self.dispatcher.adapters.values(), self.notices.notifier])

    def close(self) -> None:
        """Let the ledger commit what is queued, sign a checkpoint of it and keep that, then
        release the database."""
        if self.ledger.halted is None and self.ledger.writing:
            try:
                self.ledger.checkpoint()
            except Exception as exc:  # the database gone: what was kept before stays
                log.warning("no checkpoint at shutdown: %s", exc)
        self.ledger.close()
        self.decider.close()
        self.follow_custody()
        self.engine.dispose()
