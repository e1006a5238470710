"""The inbox in a real browser: Debian's Chromium driven by Playwright against the real app.

Nothing is mocked: the gateway is ``create_app`` served by uvicorn on loopback
(``serve_in_background``) with the default bundle and a SQLite file; tokens come from the
runtime's ``TokenBook``; actions are proposed over HTTP. The one thing a test controls is the
decider's clock, so that an approval can expire without waiting a day.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import orjson
import pytest

from gateway.server.runtime import Runtime
from gateway.server.serving import serve_in_background
from gateway.settings import Settings

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

REPO = Path(__file__).resolve().parents[2]
POLICIES = REPO / "policies"
CHROMIUM = Path(os.environ.get("MANDATE_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
_keys = itertools.count()


class Clock:
    """Real time plus an offset the test moves forward."""

    def __init__(self) -> None:
        self.offset = dt.timedelta()

    def __call__(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC) + self.offset

    def advance(self, **delta: float) -> None:
        self.offset += dt.timedelta(**delta)


@dataclass
class Gateway:
    """A serving gateway, its runtime, and the clock its decisions and approvals read."""

    url: str
    runtime: Runtime
    clock: Clock

    def token(
        self, name: str, role: str, workflow: str | None = None, owner: str | None = None
    ) -> str:
        token, _ = self.runtime.tokens.create(name=name, role=role, workflow=workflow, owner=owner)
        assert isinstance(token, str)
        return token

    def api(self, token: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=30.0
        )

    def propose(
        self,
        token: str,
        workflow: str,
        action_type: str,
        *,
        amount: str,
        confidence: float,
        resource: str,
        **extra: Any,
    ) -> dict[str, Any]:
        """Propose over HTTP; return the verdict."""
        body = {
            "workflow": workflow,
            "action_type": action_type,
            "case_type": action_type,
            "resource": resource,
            "params": {"amount": amount},
            "confidence": confidence,
            "idempotency_key": f"ui-{next(_keys)}",
        } | extra
        with self.api(token) as client:
            response = client.post("/v1/actions", json=body)
        assert response.status_code == 200, response.text
        verdict = response.json()
        assert isinstance(verdict, dict)
        return verdict

    def hold_refund(self, agent: str, amount: str = "20.00", resource: str = "booking/B-1") -> str:
        """A refund by payments-agent: level 1 (advisory) holds it. Returns the approval id."""
        verdict = self.propose(
            agent, "parking", "refund.issue", amount=amount, confidence=0.9, resource=resource
        )
        assert verdict["verdict"] == "hold", verdict
        approval_id = verdict["approval"]["id"]
        assert isinstance(approval_id, str)
        return approval_id

    def action(self, token: str, action_id: str) -> dict[str, Any]:
        with self.api(token) as client:
            response = client.get(f"/v1/actions/{action_id}")
        assert response.status_code == 200, response.text
        body = response.json()
        assert isinstance(body, dict)
        return body

    def approval(self, token: str, approval_id: str) -> dict[str, Any]:
        with self.api(token) as client:
            response = client.get(f"/v1/approvals/{approval_id}")
        assert response.status_code == 200, response.text
        body = response.json()
        assert isinstance(body, dict)
        return body


def _serve(tmp_path: Path, **settings: Any) -> Iterator[Gateway]:
    config = Settings(data_dir=tmp_path / "data", policies=POLICIES, **settings)
    clock = Clock()
    with serve_in_background(config, clock=clock) as served:
        yield Gateway(served.url, served.runtime, clock)


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    """The gateway with the default bundle; the expiry sweeper runs every 0.1 s."""
    yield from _serve(tmp_path, sweep_interval=0.1)


@pytest.fixture
def audited_gateway(tmp_path: Path) -> Iterator[Gateway]:
    """The default bundle, but every action executed at level 2 is drawn for audit."""
    policies = tmp_path / "bundle"
    shutil.copytree(POLICIES, policies)
    data = orjson.loads((policies / "data.json").read_bytes())
    data["autonomy"]["audit_rate_bp"] = {"2": 10_000, "3": 0, "4": 0}
    (policies / "data.json").write_bytes(orjson.dumps(data))
    config = Settings(data_dir=tmp_path / "data", policies=policies)
    clock = Clock()
    with serve_in_background(config, clock=clock) as served:
        yield Gateway(served.url, served.runtime, clock)


@pytest.fixture
def lazy_sweeper_gateway(tmp_path: Path) -> Iterator[Gateway]:
    """The gateway with a sweeper that, after its first pass, waits an hour."""
    yield from _serve(tmp_path, sweep_interval=3600.0)


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless (no browser download is possible here).

    Package-scoped: Playwright's sync API keeps an event loop running on the main thread
    while it is started, and tests run after these (``asyncio.run``) must not find it.
    """
    if not CHROMIUM.exists():
        pytest.skip(
            f"{CHROMIUM} is missing: `apt-get install -y chromium` (Debian's package; .ci/run "
            "installs it) to run the browser tests"
        )
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="pip install playwright (in the dev extras)"
    )
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def new_page(browser: Browser) -> Iterator[Callable[[], Page]]:
    """Pages in fresh browser contexts (each its own cookie jar), closed after the test."""
    contexts = []

    def make() -> Page:
        context = browser.new_context(viewport={"width": 1440, "height": 900})
        context.set_default_timeout(15_000)
        contexts.append(context)
        return context.new_page()

    yield make
    for context in contexts:
        context.close()


@pytest.fixture
def page(new_page: Callable[[], Page]) -> Page:
    return new_page()
