"""Serving the app in a background thread on a free loopback port (the demo, the tests)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import uvicorn

from gateway.app import create_app
from gateway.runtime import Runtime
from gateway.settings import Settings

__all__ = ["Served", "free_port", "serve_in_background"]


@dataclass
class Served:
    """A gateway serving in this process: its URL and its runtime."""

    url: str
    runtime: Runtime


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve_in_background(settings: Settings, *, timeout: float = 30.0) -> Iterator[Served]:
    """Serve the gateway on a free loopback port until the block ends."""
    app = create_app(settings)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, name="gateway", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the gateway did not start; see the log above")
        time.sleep(0.02)
    try:
        yield Served(f"http://127.0.0.1:{port}", app.state.runtime)
    finally:
        server.should_exit = True
        thread.join(timeout=timeout)
