"""What the autonomy tests share: bundles with other autonomy terms (or an extra Rego rule),
the figures as the API shows them, outcomes and votes, and a loopback notify hook.

Nothing of ours is mocked: gateways are ``tests.approvals.harness.start`` (``create_app`` under
uvicorn on loopback) on real SQLite files and PostgreSQL schemas.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import orjson

from tests.approvals.harness import POLICIES, proposal, propose

AUDIT_PREFIX = b"mandate/audit/v1:"  # the documented rule, written out again on purpose


def bundle(
    target: Path,
    *,
    data: Callable[[dict[str, Any]], None] | None = None,
    rego: dict[str, str] | None = None,
) -> Path:
    """A copy of the default bundle with ``data`` applied to data.json and Rego appended to
    modules (``{"parking.rego": "hold contains ... if ..."}``)."""
    shutil.copytree(POLICIES, target)
    if data is not None:
        loaded = orjson.loads((target / "data.json").read_bytes())
        data(loaded)
        (target / "data.json").write_bytes(orjson.dumps(loaded, option=orjson.OPT_INDENT_2))
    for name, text in (rego or {}).items():
        path = target / "rego" / name
        path.write_text(path.read_text() + "\n" + text + "\n")
    return target


def case_terms(workflow: str, case_type: str, **terms: Any) -> Callable[[dict[str, Any]], None]:
    """A data.json change: autonomy terms for one case type (merged over the defaults)."""

    def change(data: dict[str, Any]) -> None:
        case = data["workflows"][workflow]["case_types"].setdefault(case_type, {})
        case["autonomy"] = terms

    return change


def figures(client: httpx.Client, workflow: str, case_type: str) -> dict[str, Any]:
    """``GET /v1/autonomy/{workflow}/{case_type}``: the case type's whole view."""
    response = client.get(f"/v1/autonomy/{workflow}/{case_type}")
    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body, dict)
    return body


def report(client: httpx.Client, action_id: str, status: str) -> None:
    """The executor reports the outcome of an action it carried out (callback)."""
    response = client.post(
        f"/v1/actions/{action_id}/outcome", json={"status": status, "details": {}}
    )
    assert response.status_code == 200, response.text


def refund(client: httpx.Client, amount: str = "20", **more: Any) -> dict[str, Any]:
    """A small refund: at level 1 (advisory) held, with the recommendation to execute."""
    answer = propose(client, proposal("parking", "refund.issue", amount=amount, **more), "hold")
    assert answer["trace"]["recommendation"] == "execute", answer
    return answer


def set_level(
    client: httpx.Client, workflow: str, case_type: str, level: Any, reason: Any
) -> httpx.Response:
    body: dict[str, Any] = {"level": level}
    if reason is not None:
        body["reason"] = reason
    return client.post(f"/v1/autonomy/{workflow}/{case_type}", json=body)


def drawn(action_id: str, rate_bp: int) -> bool:
    """The audit sample as an auditor recomputes it from the documented rule alone."""
    value = int.from_bytes(hashlib.sha256(AUDIT_PREFIX + action_id.encode()).digest()[:8], "big")
    return value * 10_000 < rate_bp * 2**64


@dataclass
class NotifyHook:
    """A loopback incoming webhook: its URL and the messages posted to it."""

    url: str
    posted: list[dict[str, Any]] = field(default_factory=list)

    def texts(self) -> list[str]:
        return [str(message.get("text", "")) for message in list(self.posted)]


@contextmanager
def notify_hook() -> Iterator[NotifyHook]:
    made = NotifyHook("")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            made.posted.append(json.loads(body))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    made.url = f"http://127.0.0.1:{server.server_address[1]}/services/T0/B0/autonomy"
    try:
        yield made
    finally:
        server.shutdown()
        server.server_close()
