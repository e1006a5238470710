"""Serving the app: in a background thread on a free loopback port (the demo, the tests), or
in worker processes that each build it from the environment (``mandate serve --workers N``)."""

from __future__ import annotations

import datetime as dt
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI

from gateway.logs import configure_logging
from gateway.server.app import create_app
from gateway.server.runtime import Runtime
from gateway.settings import Settings

__all__ = [
    "WORKER_FACTORY",
    "Served",
    "app_from_environment",
    "export_settings",
    "free_port",
    "serve_in_background",
]

# What uvicorn imports in each worker process: it needs an import string, not an app object,
# to start more than one.
WORKER_FACTORY = "gateway.server.serving:app_from_environment"


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
def serve_in_background(
    settings: Settings,
    *,
    timeout: float = 30.0,
    clock: Callable[[], dt.datetime] | None = None,
) -> Iterator[Served]:
    """Serve the gateway on a free loopback port until the block ends (``clock``: what its
    decisions, approvals and sweeper read as now; tests move it)."""
    app = create_app(settings, clock=clock)
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


def export_settings(settings: Settings, environ: MutableMapping[str, str]) -> None:
    """Put the settings that were given (command line, environment, ``mandate.toml``) into
    ``environ`` as ``MANDATE_*`` variables, so that worker processes resolve the same ones.

    Only the given ones: a worker must tell a given ``--policies`` from the default as this
    process does (a given bundle directory is activated at start, the default one is not).
    """
    prefix = str(settings.model_config.get("env_prefix", ""))
    for name, value in settings.model_dump(mode="json", include=settings.model_fields_set).items():
        key = f"{prefix}{name}".upper()
        if value is None:
            environ.pop(key, None)
        else:
            environ[key] = value if isinstance(value, str) else json.dumps(value)


def app_from_environment() -> FastAPI:
    """The app of one worker process, with the settings ``export_settings`` passed on."""
    settings = Settings()
    configure_logging(settings)
    return create_app(settings)
