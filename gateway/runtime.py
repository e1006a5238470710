"""Everything a running gateway holds, assembled once at start and handed to every request."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from gateway.identity import TokenBook
from gateway.metrics import Metrics
from gateway.models import AUTONOMY, create_gateway_tables
from gateway.pipeline import ActivePolicy, AutonomyBook, Decider
from gateway.policy.bundle import load_bundle
from gateway.policy.permit import Permitter
from gateway.policy.rego import OpaServerEngine, RegoEngine, RegorusEngine
from gateway.settings import Settings
from gateway.storage import open_engine, open_ledger
from ledger.store import Ledger

__all__ = ["Runtime", "load_policy"]


def load_policy(root: Path, opa_url: str | None = None) -> ActivePolicy:
    """Load a bundle and build its engines (regorus in-process, or an OPA server)."""
    bundle = load_bundle(root)
    engine: RegoEngine = OpaServerEngine(opa_url) if opa_url else RegorusEngine(bundle)
    return ActivePolicy(bundle, Permitter(bundle.casbin_model, bundle.casbin_policy), engine)


@dataclass
class Runtime:
    """The process's dependencies: one object, so that tests and replays can build their own."""

    settings: Settings
    engine: Engine
    ledger: Ledger
    tokens: TokenBook
    decider: Decider
    metrics: Metrics

    @classmethod
    def start(
        cls, settings: Settings, *, clock: Callable[[], dt.datetime] | None = None
    ) -> Runtime:
        """Open the database, the ledger (signing key made on first start) and the policy."""
        engine = open_engine(settings)
        create_gateway_tables(engine)
        policy = load_policy(settings.policies, settings.opa_url)
        ledger = open_ledger(settings, engine)
        with engine.connect() as conn:
            levels = {
                (row.workflow, row.case_type): row.level
                for row in conn.execute(sa.select(AUTONOMY))
            }
        decider = Decider(engine, ledger, policy, AutonomyBook(levels))
        if clock is not None:
            decider.clock = clock
        metrics = Metrics()
        metrics.ledger_entries.set(ledger.size())
        return cls(settings, engine, ledger, TokenBook(engine), decider, metrics)

    def close(self) -> None:
        """Let the ledger commit what is queued, then release the database."""
        self.ledger.close()
        self.engine.dispose()
