"""Prometheus metrics of one gateway process."""

from __future__ import annotations

import math
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["Metrics"]


class Metrics:
    """Decisions by verdict, decision latency, ledger size."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.decisions = Counter(
            "mandate_decisions",
            "Decisions made, by verdict.",
            ["verdict"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "mandate_decision_seconds",
            "Time from a proposal's arrival to its durable verdict.",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=self.registry,
        )
        self.ledger_entries = Gauge(
            "mandate_ledger_entries", "Entries in the ledger.", registry=self.registry
        )
        self.failures = Counter(
            "mandate_fail_closed",
            "Proposals answered 503 because a part the decision depends on failed.",
            registry=self.registry,
        )

    def follow_ledger(self, size: Callable[[], int]) -> None:
        """Report the ledger's size as read at each scrape (NaN while it cannot be read), so
        retries, checkpoints and other processes' appends are counted as they are."""

        def read() -> float:
            try:
                return float(size())
            except Exception:
                return math.nan

        self.ledger_entries.set_function(read)

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
