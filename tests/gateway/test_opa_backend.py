"""The OPA-server backend against a real loopback server that speaks OPA's REST API.

No OPA binary can be installed here, so the server is written here with http.server over OPA's
own evaluator (OPA v1.20.2's Go rego package, through opa-golib-python-bindings): the semantics
are OPA's, only the HTTP around them is ours. It answers the APIs the gateway uses, in OPA's
shapes: the Policy API (``GET /v1/policies``, ``PUT`` and ``DELETE /v1/policies/{id}``), the Data
API (``GET``, ``PUT`` and ``POST /v1/data[/{path}]``; an undefined document is ``{}``), the Query
API (``POST /v1/query`` with ``{"query", "input"}``: ``{"result": [bindings…]}``) and /health.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.policy.bundle import load_bundle
from tests.conftest import Database
from tests.gateway.support import (
    POLICIES,
    Gateway,
    Serve,
    assert_problem,
    copy_bundle,
    good_booking,
    wait_for,
)
from tests.gateway.test_verdicts import TABLE
from tests.policies.support import raised_review, texts

opa_bindings = pytest.importorskip("opa_bindings", reason="OPA's evaluator (mandate[opa])")

FIXED = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


class OpaLike:
    """A loopback HTTP server answering OPA's Policy, Data and Query APIs and /health, over OPA's
    own evaluator. It starts empty, as OPA does: the gateway loads it."""

    def __init__(self, port: int = 0) -> None:
        self.lock = threading.Lock()
        self.modules: dict[str, str] = {}
        self.data: dict[str, Any] = {}
        self.evaluator = opa_bindings.OpaEngine()
        self.queries: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/health":
                    self._send(200, {})
                elif self.path.rstrip("/") == "/v1/policies":
                    with owner.lock:
                        listed = [{"id": k, "raw": v} for k, v in sorted(owner.modules.items())]
                    self._send(200, {"result": listed})
                elif self.path.startswith("/v1/data"):
                    self._send(200, owner.document(self._data_path(), None))
                else:
                    self._send(404, {"code": "resource_not_found", "message": self.path})

            def do_PUT(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.path.startswith("/v1/policies/"):
                    problem = owner.put_module(self.path[len("/v1/policies/") :], body.decode())
                    if problem is None:
                        self._send(200, {})
                    else:
                        self._send(400, {"code": "invalid_parameter", "message": problem})
                elif self.path.startswith("/v1/data"):
                    owner.put_data(self._data_path(), json.loads(body))
                    self._send(204, None)
                else:
                    self._send(404, {"code": "resource_not_found", "message": self.path})

            def do_DELETE(self) -> None:
                found = owner.delete_module(self.path[len("/v1/policies/") :])
                if self.path.startswith("/v1/policies/") and found:
                    self._send(200, {})
                else:
                    self._send(404, {"code": "resource_not_found", "message": self.path})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                request = json.loads(self.rfile.read(length) or b"{}")
                try:
                    if self.path.split("?")[0] == "/v1/query":
                        answer = owner.query(request["query"], request.get("input"))
                    elif self.path.startswith("/v1/data"):
                        answer = owner.document(self._data_path(), request.get("input"))
                    else:
                        self._send(404, {"code": "resource_not_found", "message": self.path})
                        return
                except opa_bindings.OpaError as exc:
                    self._send(400, {"code": "invalid_parameter", "message": exc.message})
                    return
                self._send(200, answer)

            def _data_path(self) -> str:
                return self.path.split("?")[0][len("/v1/data") :].strip("/")

            def _send(self, status: int, body: dict[str, Any] | None) -> None:
                data = b"" if body is None else json.dumps(body).encode()
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

    def _load(self, modules: dict[str, str], data: dict[str, Any]) -> None:
        """A fresh evaluator with these modules and data (OPA compiles them all together)."""
        evaluator = opa_bindings.OpaEngine()
        for module_id, source in modules.items():
            evaluator.add_policy(module_id, source)
        evaluator.add_data(data)
        self.evaluator, self.modules, self.data = evaluator, modules, data

    def put_module(self, module_id: str, source: str) -> str | None:
        with self.lock:
            try:
                self._load({**self.modules, module_id: source}, self.data)
            except opa_bindings.OpaError as exc:
                return str(exc.message)
        return None

    def delete_module(self, module_id: str) -> bool:
        with self.lock:
            if module_id not in self.modules:
                return False
            self._load({k: v for k, v in self.modules.items() if k != module_id}, self.data)
        return True

    def put_data(self, path: str, value: Any) -> None:
        with self.lock:
            data = json.loads(json.dumps(self.data))
            if not path:
                data = value
            else:
                *parents, last = path.split("/")
                node = data
                for part in parents:
                    node = node.setdefault(part, {})
                node[last] = value
            self._load(self.modules, data)

    def document(self, path: str, input_: Any) -> dict[str, Any]:
        try:
            value = self.evaluator.eval_document(path.replace("/", "."), input_)
        except opa_bindings.OpaUndefinedError:
            return {}  # OPA: an undefined document is an answer without "result"
        return {"result": value}

    def query(self, query: str, input_: Any) -> dict[str, Any]:
        with self.lock:
            self.queries.append(query)
            evaluator = self.evaluator  # one snapshot: a query never sees half a change
        return {"result": evaluator.eval_query(query, input_)}

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def opa() -> Iterator[OpaLike]:
    server = OpaLike()
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

    # Casbin refused one row, so OPA was asked for the seven others: each one query for the
    # digest the server holds and the workflow's package, from one snapshot of its store.
    assert len(opa.queries) == len(TABLE) - 1
    assert all(q.startswith("digest := data.mandate_bundle.digest; ") for q in opa.queries)
    assert {q.split("workflows[")[1].split("]")[0] for q in opa.queries} == {
        '"claims"',
        '"parking"',
    }


def _claim(amount: str, key: str) -> dict[str, Any]:
    return TABLE["small-claim"].body | {"params": {"amount": amount}, "idempotency_key": key}


def test_the_gateway_loads_the_server_and_fails_closed_when_it_holds_another_bundle(
    opa: OpaLike, sqlite_database: Database, tmp_path: Path, serve_gateway: Serve
) -> None:
    gateway = serve_gateway(sqlite_database, opa_url=opa.url)
    bundle = load_bundle(POLICIES)
    # At start the gateway pushed its bundle: every module (Policy API), data.json and its
    # digest (Data API).
    assert set(opa.modules) == {f"mandate/{path}" for path in bundle.modules}
    assert opa.data["workflows"] == bundle.data["workflows"]
    assert opa.data["mandate_bundle"] == {"digest": bundle.digest}
    client = gateway.as_role("claims-agent")
    held = client.post("/v1/actions", json=_claim("12000", "opa-push-1")).json()
    assert [r["code"] for r in held["reasons"]] == ["high_value"]

    # Someone else loads the server with another bundle: nothing is decided by it.
    httpx.put(f"{opa.url}/v1/data/mandate_bundle", json={"digest": "f" * 64}).raise_for_status()
    size = gateway.proposals_recorded()
    problem = assert_problem(client.post("/v1/actions", json=_claim("800", "opa-push-2")), 503)
    assert (
        f"holds bundle ffffffffffff, not the active bundle {bundle.digest[:12]}"
        in (problem["detail"])
    )
    assert gateway.proposals_recorded() == size
    ready = gateway.as_role("auditor").get("/readyz")
    assert ready.status_code == 503
    assert "holds bundle ffffffffffff" in ready.json()["checks"]["policy"]

    # Activating a bundle pushes it: with review from 20,000, a claim of 12,000 runs alone.
    candidate = copy_bundle(tmp_path, "raised")
    raised_review(candidate)
    admin = gateway.as_role("policy-admin")
    done = admin.post(
        "/v1/policies", json={"files": texts(candidate), "reason": "raise the review threshold"}
    )
    assert done.status_code == 200, done.text
    assert opa.data["mandate_bundle"] == {"digest": load_bundle(candidate).digest}
    answer = client.post("/v1/actions", json=_claim("12000", "opa-push-3")).json()
    assert answer["verdict"] == "execute", answer
    assert answer["trace"]["bundle_digest"] == load_bundle(candidate).digest


def test_a_package_the_opa_server_lacks_gives_503(
    sqlite_database: Database, serve_gateway: Serve
) -> None:
    server = OpaLike()
    try:
        gateway = serve_gateway(sqlite_database, opa_url=server.url)
        # A module deleted on the server behind the gateway's back (the digest stays).
        httpx.delete(f"{server.url}/v1/policies/mandate/rego/claims.rego").raise_for_status()
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
    server = OpaLike()
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
        server = OpaLike(port=server.port)  # back, on the same address, empty (as OPA restarts)

    # The gateway loads it again within a poll of the slots, and is ready once it has.
    assert wait_for(lambda: auditor.get("/readyz").status_code == 200)
    assert server.data["mandate_bundle"] == {"digest": load_bundle(POLICIES).digest}
    again = client.post("/v1/actions", json=body)
    assert again.status_code == 200, again.text
    assert again.json()["verdict"] == "execute"
    server.stop()
