"""A real gateway on a loopback port for tests, with a helper to make tokens."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from gateway.server.runtime import Runtime
from gateway.server.serving import serve_in_background
from gateway.settings import Settings


@dataclass
class LiveGateway:
    """A serving gateway: its URL and its runtime (for making tokens, reading the ledger)."""

    url: str
    runtime: Runtime

    def token(self, name: str, role: str, workflow: str | None = None) -> str:
        """Make a token for a role."""
        token, _ = self.runtime.tokens.create(name=name, role=role, workflow=workflow)
        return token


@contextmanager
def serve(settings: Settings) -> Iterator[LiveGateway]:
    """Serve the app until the block ends."""
    with serve_in_background(settings) as served:
        yield LiveGateway(served.url, served.runtime)
