"""The OPA-server backend against a real loopback server that speaks OPA's Data API.

The server is written here with http.server and evaluates the bundle with regorus, so its
answers are real Rego: ``POST /v1/data/<package path>`` with ``{"input": ...}`` answers
``{"result": <the package's document>}``, or ``{}`` for a package it does not have, as OPA does.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import regorus

from gateway.policy.bundle import load_bundle
from tests.conftest import Database
from tests.gateway.support import (
    POLICIES,
    Gateway,
    Serve,
    assert_problem,
    copy_bundle,
    good_booking,
)
from tests.gateway.test_verdicts import TABLE

FIXED = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


class OpaLike:
    """A loopback HTTP server answering OPA's Data API and /health from a bundle."""

    def __init__(self, bundle_root: Path, port: int = 0) -> None:
        self.bundle = load_bundle(bundle_root)
        self.lock = threading.Lock()
        self.queries: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/health":
                    self._send(200, {})
                else:
                    self._send(404, {"code": "resource_not_found", "message": self.path})

            def do_POST(self) -> None:
                prefix = "/v1/data/"
                if not self.path.startswith(prefix):
                    self._send(404, {"code": "resource_not_found", "message": self.path})
                    return
                query = "data." + self.path[len(prefix) :].strip("/").replace("/", ".")
                length = int(self.headers.get("Content-Length", "0"))
                request = json.loads(self.rfile.read(length) or b"{}")
                try:
                    status, answer = 200, owner.evaluate(query, request.get("input"))
                except Exception as exc:
                    status, answer = 500, {"code": "internal_error", "message": str(exc)}
                self._send(status, answer)

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def evaluate(self, query: str, input_: Any) -> dict[str, Any]:
        # A regorus engine may only be used by the thread that made it: one per request.
        engine = regorus.Engine()
        for path, source in self.bundle.modules.items():
            engine.add_policy(path, source)
        engine.add_data_json(json.dumps(self.bundle.data))
        engine.set_input_json(json.dumps(input_))
        results = json.loads(engine.eval_query_as_json(query)).get("result", [])  # sets as arrays
        with self.lock:
            self.queries.append(query)
        if not results:
            return {}  # OPA: an undefined document is an answer without "result"
        return {"result": results[0]["expressions"][0]["value"]}

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def opa() -> Iterator[OpaLike]:
    server = OpaLike(POLICIES)
    yield server
    server.stop()


def _comparable(answer: dict[str, Any]) -> dict[str, Any]:
    """A verdict less what differs by engine or by run (ids, the engine's name and version)."""
    trace = dict(answer["trace"])
    trace["rego"] = {k: v for k, v in trace["rego"].items() if k not in ("engine", "version")}
    approval = answer["approval"]
    return {
        "verdict": answer["verdict"],
        "reasons": answer["reasons"],
        "trace": trace,
        "approval": None if approval is None else {"quorum": approval["quorum"]},
        "expires_at": None if approval is None else approval["expires_at"],
    }


def test_the_opa_backend_gives_the_in_process_verdicts(
    opa: OpaLike, sqlite_database: Database, tmp_path: Path, serve_gateway: Serve
) -> None:
    in_process = serve_gateway(sqlite_database, clock=lambda: FIXED)
    remote = serve_gateway(
        Database(f"sqlite:///{tmp_path / 'opa.db'}"), opa_url=opa.url, clock=lambda: FIXED
    )
    clients: dict[tuple[str, str], Any] = {}
    for name, gateway in (("local", in_process), ("opa", remote)):
        for role in {row.role for row in TABLE.values()}:
            token = gateway.token(role, name=f"{role}-1")  # the same executor on both sides
            clients[name, role] = gateway.client(token)

    for row_id, row in TABLE.items():
        local = clients["local", row.role].post("/v1/actions", json=row.body)
        remote_answer = clients["opa", row.role].post("/v1/actions", json=row.body)
        assert local.status_code == remote_answer.status_code == 200, row_id
        assert remote_answer.json()["verdict"] == row.verdict, row_id
        assert remote_answer.json()["trace"]["rego"]["engine"] == "opa-server", row_id
        assert _comparable(remote_answer.json()) == _comparable(local.json()), row_id

    # Casbin refused one row, so OPA was asked for the seven others, each by its package path.
    assert sorted(set(opa.queries)) == [
        "data.mandate.workflows.claims",
        "data.mandate.workflows.parking",
    ]
    assert len(opa.queries) == len(TABLE) - 1


def test_a_package_the_opa_server_lacks_gives_503(
    tmp_path: Path, sqlite_database: Database, serve_gateway: Serve
) -> None:
    bundle = copy_bundle(tmp_path)
    (bundle / "rego" / "claims.rego").unlink()
    (bundle / "rego" / "claims_test.rego").unlink()
    server = OpaLike(bundle)
    try:
        gateway = serve_gateway(sqlite_database, opa_url=server.url)
        client = gateway.as_role("claims-agent")
        size = gateway.proposals_recorded()
        body = TABLE["small-claim"].body | {"idempotency_key": "claim-on-partial-opa"}
        problem = assert_problem(client.post("/v1/actions", json=body), 503)
        assert "has no package for workflow claims" in problem["detail"]
        assert gateway.proposals_recorded() == size
        booking = gateway.as_role("booking-agent").post("/v1/actions", json=good_booking())
        assert booking.json()["verdict"] == "execute"
    finally:
        server.stop()


def test_the_opa_server_down_gives_503_and_not_ready_until_it_is_back(
    sqlite_database: Database, serve_gateway: Serve
) -> None:
    server = OpaLike(POLICIES)
    gateway: Gateway = serve_gateway(sqlite_database, opa_url=server.url)
    client = gateway.as_role("booking-agent")
    auditor = gateway.as_role("auditor")
    assert client.post("/v1/actions", json=good_booking()).json()["verdict"] == "execute"
    assert auditor.get("/readyz").status_code == 200
    size = gateway.proposals_recorded()

    server.stop()
    try:
        body = good_booking()
        problem = assert_problem(client.post("/v1/actions", json=body), 503)
        assert f"OPA server at {server.url}" in problem["detail"]
        assert gateway.proposals_recorded() == size
        ready = auditor.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["policy"] != "ok"
        assert server.url in ready.json()["checks"]["policy"]
    finally:
        server = OpaLike(POLICIES, port=server.port)  # back, on the same address

    assert auditor.get("/readyz").status_code == 200
    again = client.post("/v1/actions", json=body)
    assert again.status_code == 200, again.text
    assert again.json()["verdict"] == "execute"
    server.stop()
