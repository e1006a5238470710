"""Fail closed, with nothing mocked: a Rego engine that raises, a Casbin model that cannot be
evaluated, a ledger whose table is gone, PostgreSQL going away, a damaged signing key file, a full
disk. Each gives 503 naming the part (or, for the key, a gateway that refuses to start and says
why), /readyz failing with the reason, never an execute or a decision entry; once the part is
back, the gateway decides again and its ledger export verifies offline."""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import sqlalchemy as sa

from gateway.server.serving import free_port
from gateway.settings import Settings
from ledger.keys import load_signing_key
from ledger.note import NoteVerifier
from ledger.verify import verify_export
from tests.conftest import Database
from tests.gateway.support import (
    POLICIES,
    PROBLEM_JSON,
    START_TIMEOUT,
    Gateway,
    Serve,
    assert_problem,
    copy_bundle,
    good_booking,
    http_client,
    proposal,
    wait_for,
    with_parking_rules,
)

_names = itertools.count()


# -- what every case checks ---------------------------------------------------------------------


def fail_closed_count(gateway: Gateway, cause: str) -> float:
    """How many 503s ``/metrics`` says were answered because ``cause`` failed."""
    text = gateway.as_role("auditor").get("/metrics").text
    match = re.search(rf'^mandate_fail_closed_total{{cause="{cause}"}} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def not_ready(response: httpx.Response) -> str:
    """``/readyz`` failed: what it says is wrong (its failing checks, or the problem detail
    when not even the caller's token could be checked)."""
    assert response.status_code == 503, response.text
    if response.headers["content-type"].startswith(PROBLEM_JSON):
        return str(assert_problem(response, 503)["detail"])
    body = response.json()
    assert body["status"] == "not ready"
    failing = {name: why for name, why in body["checks"].items() if not why.startswith("ok")}
    assert failing, body
    return "; ".join(f"{name}: {why}" for name, why in failing.items())


def public_key(settings: Settings) -> str:
    """The verifier key line of the gateway's signing key, as ``mandate ledger public-key``
    prints it."""
    return load_signing_key(settings.key_path, settings.ledger_origin).vkey


def verified_export(url: str, vkey: str, token: str, tmp_path: Path) -> list[dict[str, Any]]:
    """Export the ledger over HTTP as an auditor and verify it offline, with nothing but the
    ``ledger`` package and the gateway's public key, as a regulator would; return its entries.
    Fails the test if it does not verify."""
    path = tmp_path / f"export-{next(_names)}.jsonl"
    with (
        http_client(url, {"Authorization": f"Bearer {token}"}) as auditor,
        auditor.stream("GET", "/v1/ledger/export") as got,
    ):
        assert got.status_code == 200, got.read()
        with path.open("wb") as out:
            for chunk in got.iter_bytes():
                out.write(chunk)
    result = verify_export(path, [NoteVerifier.from_vkey(vkey)])
    entries = [orjson.loads(line) for line in path.read_bytes().splitlines()[:-1]]
    assert len(entries) == result.size  # the last line is the covering checkpoint
    return entries


def verdicts(entries: list[dict[str, Any]]) -> dict[str, str]:
    """Action id -> the verdict its decision entry records."""
    return {e["subject"]: e["body"]["verdict"] for e in entries if e["kind"] == "decision"}


def entries_from(client: httpx.Client, start: int) -> list[dict[str, Any]]:
    """The ledger's entries from ``start`` on, as ``GET /v1/ledger/entries`` gives them."""
    answer = client.get("/v1/ledger/entries", params={"start": start})
    assert answer.status_code == 200, answer.text
    return [item["entry"] for item in answer.json()]


# -- the Rego engine raising ------------------------------------------------------------------


def test_a_rego_rule_that_errors_on_some_inputs_gives_them_503_and_records_nothing(
    tmp_path: Path, sqlite_database: Database, serve_gateway: Serve
) -> None:
    # A policy bug that only some inputs reach: dividing by a parameter that may be "0".
    bundle = with_parking_rules(
        tmp_path,
        '\ndeny contains {"code": "uneven_split", "message": "split too fine"} if {\n'
        + "\t100 / to_number(input.proposal.params.split) < 10\n}\n",
    )
    gateway = serve_gateway(sqlite_database, policies=bundle)
    client = gateway.as_role("booking-agent")
    auditor_token = gateway.token("auditor")
    auditor = gateway.client(auditor_token)
    size = gateway.proposals_recorded()

    body = good_booking(params={"split": "0"})
    problem = assert_problem(client.post("/v1/actions", json=body), 503)

    assert problem["title"] == "decision unavailable"
    assert "regorus" in problem["detail"]
    assert "divide by zero" in problem["detail"]
    assert gateway.proposals_recorded() == size  # no proposal, no decision, above all no execute
    assert fail_closed_count(gateway, "rego") == 1
    assert gateway.healthy()
    # Still ready: the engine decides every other input. (Were one crafted proposal enough to
    # fail readiness, any executor could take every instance out of service.)
    assert auditor.get("/readyz").status_code == 200

    # Inputs the bug does not reach are decided; the failed key was not used up.
    fine = client.post("/v1/actions", json=body | {"params": {"split": "4"}})
    assert fine.status_code == 200, fine.text
    assert fine.json()["verdict"] == "execute"
    assert gateway.proposals_recorded() == size + 2
    entries = verified_export(gateway.url, public_key(gateway.settings), auditor_token, tmp_path)
    assert list(verdicts(entries).values()) == ["execute"]


def test_a_rego_engine_that_raises_on_every_input_gives_503_and_fails_readiness(
    tmp_path: Path, sqlite_database: Database, serve_gateway: Serve
) -> None:
    # A rule every proposal reaches, and every proposal makes fail: resources are not numbers.
    bundle = copy_bundle(tmp_path)
    rego = bundle / "rego" / "parking.rego"
    good_rego = rego.read_text()
    rego.write_text(
        good_rego
        + '\ndeny contains {"code": "odd_resource", "message": "odd"} if {\n'
        + "\tto_number(input.proposal.resource) % 2 == 1\n}\n"
    )
    gateway = serve_gateway(sqlite_database, policies=bundle)
    booker_token = gateway.token("booking-agent")
    booker = gateway.client(booker_token)
    auditor_token = gateway.token("auditor")
    auditor = gateway.client(auditor_token)
    size = gateway.proposals_recorded()

    bodies = [good_booking(), proposal("parking", "booking.create", confidence=0.5)]
    for body in bodies:
        problem = assert_problem(booker.post("/v1/actions", json=body), 503)
        assert problem["title"] == "decision unavailable"
        assert "regorus failed on data.mandate.workflows.parking" in problem["detail"]
    assert gateway.proposals_recorded() == size
    reason = not_ready(auditor.get("/readyz"))
    assert reason.startswith("policy: the Rego engine fails on a plain parking proposal")
    assert "regorus" in reason
    # Another workflow's policy is fine: its proposals are decided meanwhile.
    claims = gateway.as_role("claims-agent")
    decided = claims.post("/v1/actions", json=proposal("claims", "claim.approve", amount="100"))
    assert decided.status_code == 200, decided.text

    # Fixed and restarted on the same data and key: ready, the same requests are decided.
    gateway.stop()
    rego.write_text(good_rego)
    fixed = serve_gateway(sqlite_database, policies=bundle, data_dir=gateway.settings.data_dir)
    assert fixed.client(auditor_token).get("/readyz").status_code == 200
    answers = [fixed.client(booker_token).post("/v1/actions", json=body) for body in bodies]
    assert [a.json()["verdict"] for a in answers] == ["execute", "hold"]
    entries = verified_export(fixed.url, public_key(fixed.settings), auditor_token, tmp_path)
    recorded = verdicts(entries)
    assert [recorded[a.json()["action_id"]] for a in answers] == ["execute", "hold"]
    assert len(recorded) == 3  # with the claim, and nothing of the refused attempts


# -- Casbin, and the ledger's table ---------------------------------------------------------------


def test_a_casbin_matcher_that_cannot_be_evaluated_gives_503(
    tmp_path: Path, sqlite_database: Database, serve_gateway: Serve
) -> None:
    bundle = copy_bundle(tmp_path)
    model = bundle / "casbin" / "model.conf"
    good_model = model.read_text()
    model.write_text(good_model.replace("keyMatch(r.obj, p.obj)", "keyMatchTypo(r.obj, p.obj)"))
    gateway = serve_gateway(sqlite_database, policies=bundle)
    token = gateway.token("booking-agent", name="booker")
    client = gateway.client(token)
    size = gateway.proposals_recorded()
    body = good_booking()

    problem = assert_problem(client.post("/v1/actions", json=body), 503)

    assert "Casbin" in problem["detail"]
    assert "keyMatchTypo" in problem["detail"]
    assert gateway.proposals_recorded() == size
    assert gateway.healthy()
    assert fail_closed_count(gateway, "casbin") == 1

    # Fixed and restarted on the same data and key: the same request is decided.
    gateway.stop()
    model.write_text(good_model)
    fixed = serve_gateway(sqlite_database, policies=bundle, data_dir=gateway.settings.data_dir)
    answer = fixed.client(token).post("/v1/actions", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["verdict"] == "execute"


def test_an_unwritable_ledger_gives_503_never_an_execute_and_recovers(
    database: Database, serve_gateway: Serve, tmp_path: Path
) -> None:
    gateway = serve_gateway(database)
    client = gateway.as_role("booking-agent")
    auditor_token = gateway.token("auditor")
    auditor = gateway.client(auditor_token)
    # A held action: nothing is dispatched, so nothing else writes to the ledger meanwhile.
    first = client.post("/v1/actions", json=proposal("parking", "booking.create", confidence=0.5))
    assert first.json()["verdict"] == "hold"
    size = gateway.ledger_size()
    assert auditor.get("/readyz").status_code == 200

    # An operator (or a failing disk) takes the ledger's table away under the running gateway.
    with gateway.engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE ledger_entries RENAME TO ledger_entries_away"))
    try:
        body = good_booking()
        problem = assert_problem(client.post("/v1/actions", json=body), 503)
        assert "ledger" in problem["detail"]
        ready = auditor.get("/readyz")
        assert not_ready(ready).startswith("ledger: unavailable")
        assert ready.json()["checks"]["database"] == "ok"
        assert gateway.healthy()
    finally:
        with gateway.engine.begin() as conn:
            conn.execute(sa.text("ALTER TABLE ledger_entries_away RENAME TO ledger_entries"))

    # Nothing of the failed proposal was kept: no entry, no action, the key still free.
    assert gateway.ledger_size() == size
    with gateway.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM gateway_actions")).scalar_one() == 1
    assert fail_closed_count(gateway, "ledger") == 1

    # Back: ready again (the check proves it with a real append, a checkpoint of what came
    # before), and the same proposal is decided at the tail, on the same chain.
    assert auditor.get("/readyz").status_code == 200
    assert [e["kind"] for e in entries_from(auditor, size)] == ["checkpoint"]
    size += 1
    again = client.post("/v1/actions", json=body)
    assert again.status_code == 200, again.text
    assert again.json()["verdict"] == "execute"
    assert again.json()["ledger"]["proposal_seq"] == size
    entries = verified_export(gateway.url, public_key(gateway.settings), auditor_token, tmp_path)
    assert list(verdicts(entries).values()) == ["hold", "execute"]


def drop_every_table(database: Database) -> None:
    """What a database dropped and made again holds: none of the gateway's tables. PostgreSQL:
    the test's schema dropped and created again; SQLite: every table of the file dropped."""
    engine = sa.create_engine(database.url)
    try:
        with engine.begin() as conn:
            if database.schema is not None:
                conn.execute(sa.text(f'DROP SCHEMA "{database.schema}" CASCADE'))
                conn.execute(sa.text(f'CREATE SCHEMA "{database.schema}"'))
            else:
                tables = sa.MetaData()
                tables.reflect(conn)
                tables.drop_all(conn)
    finally:
        engine.dispose()


def test_a_dropped_and_recreated_database_gives_503_saying_so_and_is_refused_at_restart(
    database: Database, serve_gateway: Serve, tmp_path: Path
) -> None:
    gateway = serve_gateway(database)
    booker = gateway.as_role("booking-agent")
    auditor = gateway.as_role("auditor")
    assert booker.post("/v1/actions", json=good_booking()).json()["verdict"] == "execute"
    assert auditor.get("/readyz").status_code == 200
    gateway.engine.dispose()  # the test's own connections, so that nothing waits on them

    drop_every_table(database)

    # The booker's token is still in the gateway's cache: its proposal reaches the ledger,
    # which says what it lacks.
    problem = assert_problem(booker.post("/v1/actions", json=good_booking()), 503)
    assert re.search(
        r'no such table: ledger_entries|relation "ledger_entries" does not exist',
        problem["detail"],
    ), problem
    # Whatever else reads the database (a token to check, the ledger) says what happened.
    answers = {
        "read the ledger": auditor.get("/v1/ledger/checkpoint"),
        "an unknown token": gateway.client("mdt_unknown").get("/v1/ledger/checkpoint"),
    }
    for what, answer in answers.items():
        problem = assert_problem(answer, 503)
        assert "the database has no Mandate tables" in problem["detail"], (what, problem)
        assert "mandate db upgrade" in problem["detail"], (what, problem)
    reason = not_ready(auditor.get("/readyz"))
    assert reason.startswith("database: the database has no Mandate tables"), reason
    assert gateway.healthy()

    # Restarted on it, the gateway refuses it: its ledger does not extend the checkpoint the
    # gateway kept (gateway.server.custody), and nothing is written into it.
    gateway.stop()
    refused = serve_gateway(database, data_dir=gateway.settings.data_dir)
    reason = not_ready(refused.as_role("auditor").get("/readyz"))
    assert "last-checkpoint" in reason, reason
    assert refused.ledger_size() == 0
    refused.stop()
    # Told that this database is the ledger from now on (the kept checkpoint moved away), it
    # makes the tables again (auto_migrate) and starts a new ledger with the same key: ready,
    # deciding, and its export verifies.
    kept = gateway.settings.data_dir / "last-checkpoint"
    kept.rename(tmp_path / "last-checkpoint.old")
    again = serve_gateway(database, data_dir=gateway.settings.data_dir)
    auditor_token = again.token("auditor")
    assert again.client(auditor_token).get("/readyz").status_code == 200
    decided = again.as_role("booking-agent").post("/v1/actions", json=good_booking())
    assert decided.status_code == 200, decided.text
    entries = verified_export(again.url, public_key(again.settings), auditor_token, tmp_path)
    assert verdicts(entries) == {decided.json()["action_id"]: "execute"}


# -- PostgreSQL going away ----------------------------------------------------------------------


class TcpProxy:
    """A TCP forwarder on a loopback port to a real server. ``cut`` closes the listening
    socket and every connection, so the server is gone for whoever used the proxy (new
    connections are refused); ``restore`` listens on the same port again.

    ``freeze_on(marker)`` makes it stop forwarding, both ways and on every connection, from the
    first message of a client that holds ``marker`` (that one included), as a server or a
    network path that hangs would: the sockets stay open, a close is not passed on, a new
    connection is taken and never answered. ``thaw`` drops the connections it froze and
    forwards again."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self.frozen = threading.Event()
        self._marker: bytes | None = None
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._open: list[socket.socket] = []
        self.restore()

    def restore(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        with self._lock:
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._open = self._open, []
        for sock in ([listener] if listener else []) + sockets:
            _close(sock)

    def freeze_on(self, marker: bytes) -> None:
        self._marker = marker

    def thaw(self) -> None:
        with self._lock:
            self._marker = None
            self.frozen.clear()
            sockets, self._open = self._open, []
        for sock in sockets:
            _close(sock)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            if self.frozen.is_set():
                with self._lock:
                    self._open.append(client)  # taken, never answered
                continue
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:  # cut meanwhile
                    client.close()
                    upstream.close()
                    return
                self._open += [client, upstream]
            for source, sink, marked in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(
                    target=self._pump, args=(source, sink, marked), daemon=True
                ).start()

    def _pump(self, source: socket.socket, sink: socket.socket, marked: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                marker = self._marker
                if marked and marker is not None and marker in data:
                    self.frozen.set()
                if not self.frozen.is_set():
                    sink.sendall(data)
        if self.frozen.is_set():
            return  # a path that hangs passes no close on
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked on it
    sock.close()


@pytest.fixture
def pg_proxy(pg_database: Database) -> Iterator[tuple[TcpProxy, Database]]:
    """The test's PostgreSQL schema (skipped without MANDATE_TEST_DATABASE_URL), reached
    through a proxy the test can cut."""
    url = sa.make_url(pg_database.url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    via = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    yield proxy, Database(via, pg_database.schema)
    proxy.cut()


def test_postgresql_going_away_gives_503_never_an_execute_and_recovers(
    pg_proxy: tuple[TcpProxy, Database], serve_gateway: Serve, tmp_path: Path
) -> None:
    proxy, database = pg_proxy
    gateway = serve_gateway(database)
    booker_token = gateway.token("booking-agent")
    booker = gateway.client(booker_token)
    auditor_token = gateway.token("auditor")
    auditor = gateway.client(auditor_token)
    # Tokens made now and first used during the outage: the gateway must look them up.
    unseen_booker = gateway.client(gateway.token("booking-agent"))
    unseen_auditor = gateway.client(gateway.token("auditor"))
    before = booker.post("/v1/actions", json=good_booking())
    assert before.json()["verdict"] == "execute"
    assert auditor.get("/readyz").status_code == 200
    size = gateway.ledger_size()

    proxy.cut()
    bodies = [good_booking(), proposal("parking", "booking.create", confidence=0.5)]
    for body in bodies:
        problem = assert_problem(booker.post("/v1/actions", json=body), 503)
        assert re.search(r"\b(database|ledger)\b", problem["detail"]), problem
    # A token that cannot be checked is a 503 too: never a 401, never a 500.
    bodies.append(good_booking())
    problem = assert_problem(unseen_booker.post("/v1/actions", json=bodies[-1]), 503)
    assert problem["title"] == "database unavailable"
    # The driver's own words, which name hosts and ports, stay in the log.
    assert "127.0.0.1" not in problem["detail"]
    invalid = assert_problem(unseen_booker.post("/v1/actions", json={"workflow": 7}), 503)
    assert invalid["title"] == "database unavailable"  # nothing about the body before the token
    assert "database" in not_ready(auditor.get("/readyz"))
    assert "database" in not_ready(unseen_auditor.get("/readyz"))
    assert gateway.healthy()

    proxy.restore()
    assert wait_for(lambda: auditor.get("/readyz").status_code == 200)
    # Nothing of the refused proposals was kept (the readiness check's checkpoint aside), and
    # their keys are still free: the same proposals are decided now.
    assert {e["kind"] for e in entries_from(auditor, size)} <= {"checkpoint"}
    answers = [booker.post("/v1/actions", json=body) for body in bodies]
    assert [a.json()["verdict"] for a in answers] == ["execute", "hold", "execute"]
    entries = verified_export(gateway.url, public_key(gateway.settings), auditor_token, tmp_path)
    decided = [before, *answers]
    assert verdicts(entries) == {a.json()["action_id"]: a.json()["verdict"] for a in decided}


# Bounds small enough for a test: every wait on the server ends within a few seconds (a
# statement's answer 1 + 5 s, ledger.database.ANSWER_GRACE, after it is sent).
SHORT_WAITS = {
    "MANDATE_DATABASE_CONNECT_TIMEOUT": "2",
    "MANDATE_DATABASE_STATEMENT_TIMEOUT": "1",
    "MANDATE_DATABASE_LOCK_TIMEOUT": "0.5",
    "MANDATE_DATABASE_IDLE_IN_TRANSACTION_TIMEOUT": "3",
}


def test_postgresql_that_stops_answering_mid_append_gives_503_holds_no_one_and_recovers(
    pg_proxy: tuple[TcpProxy, Database],
    pg_database: Database,
    serve_gateway: Serve,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    proxy, through_proxy = pg_proxy
    for name, value in SHORT_WAITS.items():
        monkeypatch.setenv(name, value)
    # Two gateways on one schema, with one key: one reaches the server through the proxy, one
    # directly.
    hanging = serve_gateway(through_proxy)
    direct = serve_gateway(pg_database, data_dir=hanging.settings.data_dir)
    booker_token = hanging.token("booking-agent")
    auditor_token = hanging.token("auditor")
    booker, auditor = hanging.client(booker_token), hanging.client(auditor_token)
    other = direct.client(booker_token)
    decided = [booker.post("/v1/actions", json=good_booking())]
    decided.append(other.post("/v1/actions", json=good_booking()))
    assert [a.json()["verdict"] for a in decided] == ["execute", "execute"]
    assert auditor.get("/readyz").status_code == 200

    # The server stops answering the proxied gateway in the middle of its append: after the
    # append lock is taken, when the entries are sent.
    proxy.freeze_on(b"stops-answering-here")
    stuck_body = good_booking(params={"note": "stops-answering-here"})
    held_body = good_booking()
    with ThreadPoolExecutor(1) as background:
        stuck = background.submit(booker.post, "/v1/actions", json=stuck_body)
        assert proxy.frozen.wait(timeout=20)
        # The other gateway waits for the append lock that the frozen session holds: a bounded
        # wait, then a 503 that says which.
        problem = assert_problem(other.post("/v1/actions", json=held_body), 503)
        assert "lock timeout" in problem["detail"], problem
        # The server ends the session that sits idle in its transaction, and the lock with it:
        # the other gateway decides again while this one is still cut off.
        assert wait_for(
            lambda: other.post("/v1/actions", json=held_body).status_code == 200, timeout=20
        )
        # Meanwhile the proxied gateway tells the truth, and its proposal gets its answer.
        assert "database" in not_ready(auditor.get("/readyz"))
        answer = stuck.result(timeout=60)
    problem = assert_problem(answer, 503)
    assert "the database server did not answer within 6 s" in problem["detail"], problem
    assert hanging.healthy()

    # The server answers again: the gateway is ready by itself, and decides the same proposal.
    proxy.thaw()
    assert wait_for(lambda: auditor.get("/readyz").status_code == 200, timeout=20)
    decided.append(other.post("/v1/actions", json=held_body))  # the same answer, kept
    decided.append(booker.post("/v1/actions", json=stuck_body))
    assert [a.status_code for a in decided] == [200] * 4, [a.text for a in decided]
    entries = verified_export(hanging.url, public_key(hanging.settings), auditor_token, tmp_path)
    assert verdicts(entries) == {a.json()["action_id"]: a.json()["verdict"] for a in decided}


# -- a gateway in a process of its own: the signing key, the disk ----------------------------------


MANDATE = Path(sys.executable).with_name("mandate")


@dataclass
class Process:
    """``mandate serve`` in a child process, as an operator starts it; its output in ``log``."""

    popen: subprocess.Popen[bytes]
    url: str
    log: Path

    def client(self, token: str) -> httpx.Client:
        return http_client(self.url, {"Authorization": f"Bearer {token}"})

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)  # Ctrl-C: uvicorn's graceful shutdown
            try:
                self.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


# prctl(2): take a capability out of the bounding set, so that no program run after it has it.
PR_CAPBSET_DROP = 24


def drop_capabilities() -> None:
    """Make this process, and what it runs, as unprivileged as any user's: with no capability
    (root's included), file modes bind it. Where it is not root, it has none to drop."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in range(64):  # past the kernel's last one, prctl says EINVAL: nothing to do
        libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0)


def launch(
    data_dir: Path, log: Path, *, file_limit: int | None = None, unprivileged: bool = False
) -> Process:
    """Start ``mandate serve`` on a free port. With ``file_limit``, no file it writes may grow
    past that many bytes (RLIMIT_FSIZE), as on a full disk: a write beyond fails with EFBIG
    (SIGXFSZ ignored, so the process is told rather than killed). ``unprivileged``: it runs
    without capabilities, as a service's own user would (tests run as root, whom file modes do
    not stop)."""

    def limit() -> None:
        if file_limit is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))
        if unprivileged:
            drop_capabilities()

    env = {name: value for name, value in os.environ.items() if not name.startswith("MANDATE_")}
    port = free_port()
    command = [str(MANDATE), "serve", "--port", str(port), "--data-dir", str(data_dir)]
    with log.open("ab") as out:
        popen = subprocess.Popen(
            [*command, "--policies", str(POLICIES)],
            stdout=out,
            stderr=out,
            env=env,
            preexec_fn=limit,
        )
    return Process(popen, f"http://127.0.0.1:{port}", log)


def answers_health(process: Process) -> bool:
    """Whether the process serves (False while it starts, or once it has exited)."""
    with http_client(process.url) as client:
        try:
            return client.get("/healthz").status_code == 200
        except httpx.TransportError:
            return False


@pytest.fixture
def serve_process() -> Iterator[Callable[..., Process]]:
    """Start ``mandate serve`` processes and wait until they serve; all stopped after the
    test."""
    started: list[Process] = []

    def start(
        data_dir: Path, log: Path, *, file_limit: int | None = None, unprivileged: bool = False
    ) -> Process:
        process = launch(data_dir, log, file_limit=file_limit, unprivileged=unprivileged)
        started.append(process)
        if (
            not wait_for(
                lambda: process.popen.poll() is not None or answers_health(process),
                timeout=START_TIMEOUT,
            )
            or process.popen.poll() is not None
        ):
            raise AssertionError(f"mandate serve did not start:\n{log.read_text()}")
        return process

    yield start
    for process in started:
        process.stop()


def test_a_damaged_signing_key_file_keeps_the_gateway_from_starting_and_says_why(
    tmp_path: Path, serve_gateway: Serve
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    database = Database(f"sqlite:///{data / 'mandate.db'}")  # where ``mandate serve`` keeps it
    running = serve_gateway(database, data_dir=data)  # the first start makes the key
    booker_token = running.token("booking-agent")
    auditor_token = running.token("auditor")
    key = running.settings.key_path
    pem = key.read_bytes()
    vkey = public_key(running.settings)

    # Damaged under a running gateway: it signs with the key it loaded, so nothing changes
    # until it restarts, and its checkpoints verify against the key's public half.
    key.write_bytes(pem[: len(pem) // 2])
    decided = running.client(booker_token).post("/v1/actions", json=good_booking())
    assert decided.json()["verdict"] == "execute"
    assert running.client(auditor_token).get("/readyz").status_code == 200
    verified_export(running.url, vkey, auditor_token, tmp_path)
    running.stop()

    # Restarted on a damaged key (cut short, or open to others): it refuses to start and
    # says why, and nothing listens, so no proposal is decided, let alone executed.
    log = tmp_path / "gateway.log"
    for reason, mode in [
        (f"signing key {key} is not an unencrypted PEM private key", 0o600),
        (f"signing key {key} has mode 0644, open to group or others", 0o644),
    ]:
        if mode == 0o644:
            key.write_bytes(pem)
        key.chmod(mode)
        refused = launch(data, log)
        try:
            assert refused.popen.wait(timeout=START_TIMEOUT) != 0
        finally:
            refused.stop()
        assert reason in log.read_text()
        with pytest.raises(httpx.ConnectError):
            refused.client(booker_token).post("/v1/actions", json=good_booking())

    # The key restored: the gateway starts, is ready, and its ledger verifies.
    key.chmod(0o600)
    again = serve_gateway(database, data_dir=data)
    assert again.client(auditor_token).get("/readyz").status_code == 200
    entries = verified_export(again.url, vkey, auditor_token, tmp_path)
    assert verdicts(entries) == {decided.json()["action_id"]: "execute"}


def test_a_data_dir_the_gateway_cannot_write_is_not_ready_and_says_why(
    tmp_path: Path, serve_gateway: Serve, serve_process: Callable[..., Process]
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    database = Database(f"sqlite:///{data / 'mandate.db'}")  # where ``mandate serve`` keeps it
    first = serve_gateway(database, data_dir=data)
    booker_token = first.token("booking-agent")
    auditor_token = first.token("auditor")
    before = first.client(booker_token).post("/v1/actions", json=good_booking())
    assert before.json()["verdict"] == "execute"
    vkey = public_key(first.settings)
    first.stop()

    # Its files are now read-only (restored from a backup that kept them so, say): the
    # gateway's user may read them, not write them.
    files = [path for path in data.iterdir() if path.is_file()]
    modes = {path: path.stat().st_mode for path in files}
    for path in files:
        path.chmod(0o400)
    stuck = serve_process(data, tmp_path / "gateway.log", unprivileged=True)
    auditor = stuck.client(auditor_token)
    ready = auditor.get("/readyz")
    reason = not_ready(ready)
    assert "ledger: unavailable: cannot write" in reason, reason
    assert "readonly database" in reason, reason
    # The lease file is as unwritable as the rest: this process cannot sign, and it says so
    # rather than blame another process.
    signer = ready.json()["checks"]["checkpoint_signer"]
    assert "another process" not in signer, signer
    assert "Permission denied" in signer, signer
    body = good_booking()
    problem = assert_problem(stuck.client(booker_token).post("/v1/actions", json=body), 503)
    assert "readonly database" in problem["detail"], problem
    assert not_ready(auditor.get("/readyz")) == reason
    assert answers_health(stuck)
    stuck.stop()

    # Writable again: ready, and the refused proposal is decided now, on the same ledger.
    for path, mode in modes.items():
        path.chmod(mode)
    again = serve_gateway(database, data_dir=data)
    assert again.client(auditor_token).get("/readyz").status_code == 200
    answer = again.client(booker_token).post("/v1/actions", json=body)
    assert answer.json()["verdict"] == "execute"
    entries = verified_export(again.url, vkey, auditor_token, tmp_path)
    assert verdicts(entries) == {a.json()["action_id"]: "execute" for a in (before, answer)}


# What SQLite says when a write fails: EFBIG (over the file size limit) is an I/O error to it,
# ENOSPC (a full file system) a full disk.
DISK_FULL = re.compile(r"disk I/O error|database or disk is full")


def test_a_disk_filling_up_fails_readiness_before_decisions_then_503_never_an_execute(
    tmp_path: Path, serve_gateway: Serve, serve_process: Callable[..., Process]
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    database = Database(f"sqlite:///{data / 'mandate.db'}")  # where ``mandate serve`` keeps it
    first = serve_gateway(database, data_dir=data)
    booker_token = first.token("booking-agent")
    auditor_token = first.token("auditor")
    before = first.client(booker_token).post("/v1/actions", json=good_booking())
    assert before.json()["verdict"] == "execute"
    vkey = public_key(first.settings)
    first.stop()

    # The disk now has room for 2 MiB more than what is on it: ready (it keeps 1 MiB, 16
    # bodies of the largest size, for decisions).
    largest = max(path.stat().st_size for path in data.iterdir() if path.is_file())
    full = serve_process(data, tmp_path / "gateway.log", file_limit=largest + 2 * 1024 * 1024)
    booker = full.client(booker_token)
    auditor = full.client(auditor_token)
    assert auditor.get("/readyz").status_code == 200
    decided = {before.json()["action_id"]: "execute"}  # action id -> verdict answered with 200
    refused: list[dict[str, Any]] = []

    def propose(n: int) -> httpx.Response:
        body = good_booking() if n % 2 else proposal("parking", "booking.create", confidence=0.5)
        answer = booker.post("/v1/actions", json=body)
        if answer.status_code == 200:
            decided[answer.json()["action_id"]] = answer.json()["verdict"]
        else:
            refused.append(body)
        return answer

    # Propose until readiness fails: it does while decisions still succeed, as the room left
    # for the database's files falls under what it keeps.
    reason = ""
    for n in range(1000):
        assert propose(n).status_code == 200
        ready = auditor.get("/readyz")
        if ready.status_code != 200:
            reason = not_ready(ready)
            break
    assert reason.startswith("disk: full: "), reason
    # A client that does not heed readiness fills the disk: its proposals are refused, none
    # executes, and the gateway never says it is ready again meanwhile.
    for n in range(1000):
        answer = propose(n)
        assert auditor.get("/readyz").status_code == 503
        if answer.status_code != 200:
            problem = assert_problem(answer, 503)
            assert problem["detail"].startswith("the ledger did not record the decision: ")
            assert DISK_FULL.search(problem["detail"]), problem
        if len(refused) == 4:
            break
    assert len(refused) == 4, "the disk never filled up"
    assert set(decided.values()) == {"execute", "hold"}
    reason = not_ready(auditor.get("/readyz"))
    assert "disk: full: " in reason, reason
    assert DISK_FULL.search(reason), reason  # and the ledger says why its appends fail
    assert answers_health(full)
    full.stop()

    # Room again: ready; every decision answered 200 is in the verified ledger as answered,
    # nothing of the refused ones is, and they are decided now.
    again = serve_gateway(database, data_dir=data)
    assert again.client(auditor_token).get("/readyz").status_code == 200
    entries = verified_export(again.url, vkey, auditor_token, tmp_path)
    assert verdicts(entries) == decided
    keys = {e["body"]["proposal"]["idempotency_key"] for e in entries if e["kind"] == "proposal"}
    assert not keys & {body["idempotency_key"] for body in refused}
    for body in refused:
        answer = again.client(booker_token).post("/v1/actions", json=body)
        assert answer.status_code == 200, answer.text
