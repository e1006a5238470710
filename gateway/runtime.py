"""Everything a running gateway holds, assembled once at start and handed to every request."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from adapters.base import Adapter, Notifier, load_factories
from gateway.approvals import Approvals
from gateway.audits import Audits
from gateway.autonomy import Governance
from gateway.execution import Dispatcher, Routing, load_webhook_secret, payload_for
from gateway.figures import FigureBook
from gateway.history import HistoryBook
from gateway.identity import Identity, TokenBook
from gateway.metrics import Metrics
from gateway.migrations import ensure_schema
from gateway.pipeline import ActivePolicy, AutonomyBook, Decider
from gateway.policies import PolicyLifecycle, build_policy
from gateway.policy.bundle import load_bundle
from gateway.schemas import Proposal, Verdict
from gateway.settings import Settings
from gateway.storage import open_engine, open_ledger
from ledger.store import Ledger

__all__ = ["Runtime", "load_policy"]


def load_policy(root: Path, opa_url: str | None = None) -> ActivePolicy:
    """Load a bundle and build its engines (regorus in-process, or an OPA server)."""
    return build_policy(load_bundle(root), opa_url)


@dataclass
class Runtime:
    """The process's dependencies: one object, so that tests and replays can build their own."""

    settings: Settings
    engine: Engine
    ledger: Ledger
    tokens: TokenBook
    decider: Decider
    metrics: Metrics
    approvals: Approvals
    dispatcher: Dispatcher
    notifier: Notifier | None = None
    policies: PolicyLifecycle | None = None
    # Earned autonomy (levels, promotions, demotions) and post-hoc audits; set by ``start``.
    governance: Governance = field(init=False)
    audits: Audits = field(init=False)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _notices: set[asyncio.Task[Any]] = field(default_factory=set)

    @classmethod
    def start(
        cls, settings: Settings, *, clock: Callable[[], dt.datetime] | None = None
    ) -> Runtime:
        """Bring the database's schema to head (or refuse, with auto_migrate off), then open
        the ledger (signing key made on first start) and the policy."""
        engine = open_engine(settings)
        try:
            ensure_schema(engine, auto_migrate=settings.auto_migrate)
        except BaseException:
            engine.dispose()
            raise
        ledger = open_ledger(settings, engine)
        # The active bundle is the database's, shared by every process (gateway.policies).
        lifecycle = PolicyLifecycle(settings, engine, ledger)
        try:
            policy = lifecycle.bootstrap()
        except BaseException:
            ledger.close()
            engine.dispose()
            raise
        # Levels and figures are read from the database (short caches), so every process
        # sees a change another one made.
        autonomy = AutonomyBook(engine=engine, figures=FigureBook(engine))
        decider = Decider(
            engine,
            ledger,
            policy,
            autonomy,
            routing=Routing(settings.webhooks),
            history=HistoryBook(engine),
        )
        if clock is not None:
            decider.clock = clock
        factories = load_factories()
        secret = load_webhook_secret(settings.webhook_secret, settings.webhook_secret_path)
        adapters = {
            "webhook": factories["webhook"](
                {"secret": secret, "timeout": settings.dispatch_timeout}
            ),
            "callback": factories["callback"]({}),
        }
        dispatcher = Dispatcher(
            engine,
            ledger,
            {name: a for name, a in adapters.items() if isinstance(a, Adapter)},
            payload=lambda action_id: payload_for(engine, ledger, action_id),
            attempts=settings.dispatch_attempts,
            backoff=settings.dispatch_backoff,
            lease=settings.dispatch_lease,
            clock=decider.clock,
        )
        decider.on_execute = dispatcher.wake
        approvals = Approvals(engine, decider, wake_dispatcher=dispatcher.wake)
        notifier = None
        if settings.notify_url:
            made = factories["notify"]({"url": settings.notify_url})
            notifier = made if isinstance(made, Notifier) else None
        metrics = Metrics()
        metrics.follow_ledger(ledger.size)
        runtime = cls(
            settings,
            engine,
            ledger,
            TokenBook(engine),
            decider,
            metrics,
            approvals,
            dispatcher,
            notifier,
        )
        decider.on_hold = runtime.announce_hold
        runtime.governance = Governance(engine, decider, notify=runtime.announce)
        runtime.audits = Audits(engine, decider)
        autonomy.reviewer = runtime.governance.review
        dispatcher.on_outcome = autonomy.after_action
        runtime.policies = lifecycle
        lifecycle.attach(decider)
        return runtime

    def start_background(self) -> None:
        """Start the dispatcher and the expiry sweeper on the running event loop."""
        self._tasks = [
            asyncio.create_task(self.dispatcher.run(), name="dispatcher"),
            asyncio.create_task(
                self.approvals.sweep_forever(self.settings.sweep_interval, self._stop),
                name="expiry-sweeper",
            ),
        ]
        if self.policies is not None:
            self.policies.shadow.start()
            self._tasks.append(
                asyncio.create_task(
                    self.policies.watch_forever(self.settings.policy_poll_interval, self._stop),
                    name="policy-watcher",
                )
            )

    async def stop_background(self) -> None:
        """Stop the background work, letting attempts in flight finish."""
        self._stop.set()
        self.dispatcher.stop()
        await asyncio.gather(*self._tasks, *self._notices, return_exceptions=True)
        if self.policies is not None:
            await asyncio.to_thread(self.policies.shadow.stop)

    def announce_hold(self, verdict: Verdict, proposal: Proposal, identity: Identity) -> None:
        """Tell approvers of a held action through the notify adapter, if one is set."""
        if self.notifier is None:
            return
        event = {
            "title": f"Held for approval: {proposal.action_type} on {proposal.resource}",
            "workflow": proposal.workflow,
            "case_type": proposal.case_type,
            "executor": identity.name,
            "amount": proposal.params.get("amount"),
            "confidence": proposal.confidence,
            "reasons": [f"{r.code}: {r.message}" for r in verdict.reasons],
            "action_id": verdict.action_id,
            "approval_id": verdict.approval.id if verdict.approval else None,
        }
        if verdict.approval is not None:
            base = self.settings.public_url or f"http://{self.settings.host}:{self.settings.port}"
            event["url"] = f"{base.rstrip('/')}/ui/approvals/{verdict.approval.id}"
        task = asyncio.get_running_loop().create_task(self.notifier.notify(event))
        self._notices.add(task)
        task.add_done_callback(self._notices.discard)

    def announce(self, event: dict[str, Any], path: str = "/ui/autonomy") -> None:
        """Tell people of an autonomy change (a demotion, a proposed or applied promotion)
        through the notify adapter, if one is set, with a link to ``path`` in the inbox."""
        if self.notifier is None:
            return
        base = self.settings.public_url or f"http://{self.settings.host}:{self.settings.port}"
        event = event | {"url": f"{base.rstrip('/')}{path}"}
        task = asyncio.get_running_loop().create_task(self.notifier.notify(event))
        self._notices.add(task)
        task.add_done_callback(self._notices.discard)

    def close(self) -> None:
        """Let the ledger commit what is queued, then release the database."""
        self.ledger.close()
        self.engine.dispose()
