"""The witness (``python -m ledger witness``) against a gateway on loopback.

The gateway here is small and real: an ``http.server`` on 127.0.0.1 serving the checkpoints and
consistency proofs of real ``Ledger`` objects on SQLite. Only ``POST /v1/ledger/cosignatures``
is this file's own, since the gateway does not have it yet; it checks what it is sent with
``open_cosignature``, as the gateway will. Each witness runs in a subprocess, as an operator
would run it: exit codes, one line on stderr when it refuses, what it posted, its state file.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.checkpoint import parse_checkpoint_body
from ledger.cosignature import CosignatureVerifier, open_cosignature
from ledger.database import create_engine
from ledger.errors import LedgerError
from ledger.note import NoteSigner, parse_note
from ledger.store import Ledger

REPO = Path(__file__).resolve().parents[2]
ORIGIN = "test.mandate.example/ledger"
TOKEN = "witness-token"


@dataclass
class Gateway:
    """What the loopback gateway serves, and what it was sent."""

    ledger: Ledger
    witness: CosignatureVerifier | None = None
    note: str | None = None  # served instead of the ledger's latest checkpoint
    proof: list[str] | None = None  # served instead of the ledger's consistency proof
    post_status: int = 201
    posts: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""

    def latest(self) -> str:
        if self.note is not None:
            return self.note
        latest = self.ledger.latest_checkpoint()
        return latest.note if latest is not None else self.ledger.checkpoint().note


def _handler(gateway: Gateway) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def _answer(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _authorized(self) -> bool:
            if self.headers.get("Authorization") == f"Bearer {TOKEN}":
                return True
            self._answer(401, {"title": "Unauthorized", "status": 401, "detail": "no token"})
            return False

        def do_GET(self) -> None:
            if not self._authorized():
                return
            url = urllib.parse.urlsplit(self.path)
            query = dict(urllib.parse.parse_qsl(url.query))
            if url.path == "/v1/ledger/checkpoint":
                note = gateway.latest()
                cp = parse_checkpoint_body(parse_note(note).text)
                self._answer(200, {"size": cp.size, "root_hash": cp.root.hex(), "note": note})
            elif url.path == "/v1/ledger/proofs/consistency":
                first, second = int(query["from"]), int(query["to"])
                proof = gateway.proof
                if proof is None:
                    proof = [h.hex() for h in gateway.ledger.consistency_proof(first, second)]
                self._answer(200, {"size1": first, "size2": second, "proof": proof})
            else:
                self._answer(404, {"title": "Not Found", "status": 404})

        def do_POST(self) -> None:
            if not self._authorized():
                return
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path != "/v1/ledger/cosignatures":
                self._answer(404, {"title": "Not Found", "status": 404})
                return
            gateway.posts.append(body)
            if gateway.post_status >= 300:
                self._answer(gateway.post_status, {"title": "Failed", "detail": "disk full"})
                return
            stored = gateway.ledger.checkpoint_at(body["checkpoint_size"])
            assert stored is not None
            assert gateway.witness is not None
            open_cosignature(stored.note, body["cosignature"], [gateway.witness])
            self._answer(201, {"checkpoint_size": body["checkpoint_size"]})

    return Handler


def new_ledger(directory: Path, signer: NoteSigner) -> Ledger:
    directory.mkdir(parents=True)
    engine = create_engine(f"sqlite:///{directory / 'mandate.db'}")
    # Checkpoints only when a test asks (grow), so a test knows every checkpoint's size.
    return Ledger(
        engine, origin=ORIGIN, signer=signer, checkpoint_every=10_000, checkpoint_interval=None
    ).open()


def grow(ledger: Ledger, count: int, tag: str = "a") -> int:
    """Append ``count`` entries, sign a checkpoint of them all, and return its size."""
    for i in range(count):
        ledger.append("decision", actor="agent", subject=f"{tag}-{i}", body={"n": i})
    return ledger.checkpoint().size


@dataclass
class Setup:
    gateway: Gateway
    log_signer: NoteSigner
    directory: Path
    key: Path
    log_key: Path
    state: Path
    witness: CosignatureVerifier

    def run(self, *extra: str, token: str = TOKEN, url: str | None = None) -> Witnessed:
        args = [
            "--url",
            url or self.gateway.url,
            "--log-key",
            str(self.log_key),
            "--key",
            str(self.key),
            "--state",
            str(self.state),
            "--once",
            *extra,
        ]
        before = len(self.gateway.posts)
        done = subprocess.run(
            [sys.executable, "-m", "ledger", "witness", *args],
            env=env(token),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return Witnessed(done.returncode, done.stdout, done.stderr, self.gateway.posts[before:])

    def state_size(self) -> int:
        note = json.loads(self.state.read_text())["checkpoint"]
        return parse_checkpoint_body(parse_note(note).text).size

    def other_ledger(self, name: str, signer: NoteSigner | None = None) -> Ledger:
        return new_ledger(self.directory / name, signer or self.log_signer)


@dataclass
class Witnessed:
    code: int
    out: str
    err: str
    posted: list[dict[str, Any]]


def env(token: str) -> dict[str, str]:
    values = {k: v for k, v in os.environ.items() if not k.startswith("MANDATE_")}
    values["PYTHONPATH"] = str(REPO)
    if token:
        values["MANDATE_TOKEN"] = token
    return values


def keygen(name: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ledger", "witness", "keygen", name, "--out", str(path)],
        env=env(""),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    signer = NoteSigner(ORIGIN, Ed25519PrivateKey.generate())
    ledger = new_ledger(tmp_path / "a", signer)
    gateway = Gateway(ledger)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(gateway))
    gateway.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    made = keygen("witness.example/w1", tmp_path / "witness.key")
    assert made.returncode == 0, made.stderr
    gateway.witness = CosignatureVerifier.from_vkey(made.stdout.strip())
    log_key = tmp_path / "log.pub"
    log_key.write_text(signer.vkey + "\n")
    try:
        yield Setup(
            gateway,
            signer,
            tmp_path,
            tmp_path / "witness.key",
            log_key,
            tmp_path / "witness.state",
            gateway.witness,
        )
    finally:
        server.shutdown()
        server.server_close()
        ledger.close()


def test_keygen_writes_a_private_key_and_prints_only_its_verifier_line(tmp_path: Path) -> None:
    made = keygen("witness.example/w1", tmp_path / "keys" / "w.key")
    assert made.returncode == 0
    assert made.stderr == ""
    (line,) = made.stdout.splitlines()
    witness = CosignatureVerifier.from_vkey(line)
    assert witness.name == "witness.example/w1"
    path = tmp_path / "keys" / "w.key"
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert path.read_text().startswith("PRIVATE+KEY+witness.example/w1+")

    again = keygen("witness.example/w1", path)
    assert again.returncode == 2
    assert again.stdout == ""
    assert len(again.stderr.splitlines()) == 1
    assert "already exists" in again.stderr
    assert keygen("bad name", tmp_path / "w2.key").returncode == 2


def test_consistent_growth_is_cosigned_and_the_state_advances(setup: Setup) -> None:
    ledger = setup.gateway.ledger
    first = grow(ledger, 7)
    done = setup.run()
    assert done.code == 0, done.err
    assert "trusted as the start" in done.out
    assert [p["checkpoint_size"] for p in done.posted] == [first]
    assert setup.state_size() == first

    second = grow(ledger, 12)
    before = int(time.time())
    done = setup.run()
    after = int(time.time())
    assert done.code == 0, done.err
    assert f"cosigned size {second}" in done.out
    assert f"extends size {first}" in done.out
    (posted,) = done.posted
    assert posted["checkpoint_size"] == second
    note = ledger.checkpoint_at(second)
    assert note is not None
    cosignature = open_cosignature(note.note, posted["cosignature"], [setup.witness])
    assert before <= cosignature.timestamp <= after
    assert setup.state_size() == second

    # Nothing new: nothing is posted, and the state stays.
    done = setup.run()
    assert done.code == 0
    assert done.posted == []
    assert "nothing new" in done.out
    assert setup.state_size() == second


def test_a_forked_log_is_refused_and_nothing_is_posted(setup: Setup) -> None:
    size = grow(setup.gateway.ledger, 7)
    assert setup.run().code == 0
    state = setup.state.read_text()

    # Another ledger with the same key and origin: a second history the operator could show.
    fork = setup.other_ledger("fork")
    try:
        setup.gateway.ledger = fork
        # First a tree of the very size the witness cosigned, with another root.
        assert grow(fork, 7, tag="b") == size
        done = setup.run()
        assert done.code == 1
        assert done.err.startswith(
            f"REFUSED: fork: the log signed two different trees of size {size}"
        )
        assert len(done.err.splitlines()) == 1
        assert done.posted == []
        assert setup.state.read_text() == state

        # Then a larger tree, with a consistency proof that holds within the fork.
        larger = grow(fork, 20, tag="b")
        done = setup.run()
        assert done.code == 1
        assert done.err == (
            f"REFUSED: inconsistent: the checkpoint of size {larger} does not extend the one of "
            f"size {size} this witness cosigned (a fork, or history rewritten)\n"
        )
        assert done.posted == []
        assert setup.state.read_text() == state
    finally:
        fork.close()


def _checkpoint_at(ledger: Ledger, size: int) -> str:
    stored = ledger.checkpoint_at(size)
    assert stored is not None, f"no checkpoint at {size}"
    return stored.note


def test_a_rolled_back_checkpoint_is_refused(setup: Setup) -> None:
    ledger = setup.gateway.ledger
    old = grow(ledger, 3)
    newer = grow(ledger, 9)
    assert setup.run().code == 0
    setup.gateway.note = _checkpoint_at(ledger, old)
    done = setup.run()
    assert done.code == 1
    assert done.err == (
        f"REFUSED: rolled back: the log's checkpoint has size {old}, smaller than the size "
        f"{newer} this witness cosigned\n"
    )
    assert done.posted == []
    assert setup.state_size() == newer


def test_a_checkpoint_the_log_key_did_not_sign_is_refused(setup: Setup) -> None:
    grow(setup.gateway.ledger, 4)
    stranger = setup.other_ledger("stranger", NoteSigner(ORIGIN, Ed25519PrivateKey.generate()))
    try:
        setup.gateway.note = stranger.checkpoint().note
        done = setup.run()
    finally:
        stranger.close()
    assert done.code == 1
    assert done.err.startswith("REFUSED: the checkpoint is not signed by the log's key")
    assert done.posted == []
    assert not setup.state.exists()


@pytest.mark.parametrize(
    ("proof", "problem"),
    [
        (lambda p: [p[0][:-2] + ("00" if p[0][-2:] != "00" else "01"), *p[1:]], "inconsistent"),
        (lambda p: p[:-1], "malformed consistency proof"),
        (lambda p: [*p, p[0]], "malformed consistency proof"),
        (lambda p: [p[0][:-2], *p[1:]], "malformed consistency proof"),  # 31 bytes
        (lambda p: ["not hex", *p[1:]], "not a list of hex hashes"),
    ],
)
def test_a_bad_consistency_proof_is_refused(setup: Setup, proof: Any, problem: str) -> None:
    ledger = setup.gateway.ledger
    first = grow(ledger, 6)
    assert setup.run().code == 0
    second = grow(ledger, 20)
    real = [h.hex() for h in ledger.consistency_proof(first, second)]
    assert len(real) >= 2
    setup.gateway.proof = proof(real)
    done = setup.run()
    assert done.code == 1, done.err
    assert done.err.startswith("REFUSED: ")
    assert problem in done.err
    assert done.posted == []
    assert setup.state_size() == first


def test_a_cosignature_the_gateway_failed_to_take_is_sent_again_unchanged(setup: Setup) -> None:
    grow(setup.gateway.ledger, 4)
    setup.gateway.post_status = 503
    failed = setup.run()
    assert failed.code == 3
    assert "HTTP 503: disk full" in failed.err
    assert json.loads(setup.state.read_text())["posted"] is False

    setup.gateway.post_status = 201
    done = setup.run()
    assert done.code == 0, done.err
    assert "sent again" in done.out
    assert [p["cosignature"] for p in done.posted] == [failed.posted[0]["cosignature"]]
    assert json.loads(setup.state.read_text())["posted"] is True


def test_unusable_input_exits_2_with_one_line(setup: Setup, tmp_path: Path) -> None:
    grow(setup.gateway.ledger, 4)
    cases = [
        setup.run("--key", str(tmp_path / "missing.key")),
        setup.run("--log-key", str(tmp_path / "missing.pub")),
        setup.run(url="ftp://example.org"),
        setup.run(url="not a url"),
        setup.run(token=""),
        setup.run("--state", str(tmp_path / "no" / "such" / "dir" / "state")),
        setup.run(url=setup.gateway.url + "/elsewhere"),
    ]
    for done in cases:
        assert done.code == 2, done.err
        assert len(done.err.splitlines()) == 1, done.err
        assert done.err.startswith("error: ")
        assert done.posted == []
    assert "MANDATE_TOKEN" in cases[4].err
    assert "HTTP 404" in cases[6].err

    setup.state.write_text("{not json")
    done = setup.run()
    assert done.code == 2
    assert "is not a witness's state" in done.err

    missing = subprocess.run(
        [sys.executable, "-m", "ledger", "witness", "--url", setup.gateway.url, "--once"],
        env=env(TOKEN),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert missing.returncode == 2
    assert "--log-key, --key, --state are required" in missing.stderr


def test_an_unreachable_gateway_exits_3(setup: Setup) -> None:
    with socket.socket() as closed:  # a port nothing listens on once the socket is closed
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    done = setup.run(url=f"http://127.0.0.1:{port}")
    assert done.code == 3
    assert done.err.startswith(f"error: cannot reach the gateway at http://127.0.0.1:{port}/")
    assert len(done.err.splitlines()) == 1


def test_a_running_witness_keeps_cosigning_and_holds_its_state(setup: Setup) -> None:
    ledger = setup.gateway.ledger
    grow(ledger, 4)
    args = ["--url", setup.gateway.url, "--log-key", str(setup.log_key), "--key", str(setup.key)]
    args += ["--state", str(setup.state), "--interval", "0.1"]
    running = subprocess.Popen(
        [sys.executable, "-m", "ledger", "witness", *args],
        env=env(TOKEN),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(lambda: len(setup.gateway.posts) == 1)
        # A second witness on the same state could cosign another tree of the same size.
        second = setup.run()
        assert second.code == 2
        assert "another witness is running" in second.err
        size = grow(ledger, 9)
        _wait_for(lambda: [p["checkpoint_size"] for p in setup.gateway.posts][-1:] == [size])
    finally:
        running.terminate()
        running.wait(timeout=30)
    assert setup.state_size() == size


def _wait_for(condition: Any) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        if time.monotonic() > deadline:
            raise LedgerError("the witness did not get there within a minute")
        time.sleep(0.05)
