"""Witnesses of a real gateway: `python -m ledger witness` cosigns its checkpoints over loopback,
the gateway keeps each cosignature with its checkpoint, and an export verifies with witnesses
required; a rolled-back log is refused. Nothing is mocked: the witness and the verifier run as
subprocesses, as an independent party and a regulator would run them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.db.connect import signing_key
from ledger.checkpoint import Checkpoint, sign_checkpoint
from ledger.cosignature import CosignatureVerifier, Cosigner, verify_cosignatures
from ledger.note import parse_note
from tests.conftest import Database
from tests.gateway.support import REPO, Gateway, Serve, assert_problem, fields_named, good_booking

Run = subprocess.CompletedProcess[str]


def _ledger(*args: str, token: str | None = None) -> Run:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MANDATE_")}
    if token is not None:
        env["MANDATE_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "ledger", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


class Witness:
    """A witness's key, verifier line and state, in a directory of its own."""

    def __init__(self, root: Path, name: str) -> None:
        root.mkdir()
        self.key, self.pub, self.state = root / "w.key", root / "w.pub", root / "w.state"
        made = _ledger("witness", "keygen", name, "--out", str(self.key))
        assert made.returncode == 0, made.stderr
        self.pub.write_text(made.stdout)
        self.verifier = CosignatureVerifier.from_vkey(made.stdout.strip())

    def round(self, gateway: Gateway, log_key: Path, token: str) -> Run:
        return _ledger(
            "witness",
            "--url",
            gateway.url,
            "--log-key",
            str(log_key),
            "--key",
            str(self.key),
            "--state",
            str(self.state),
            "--once",
            token=token,
        )


@pytest.fixture
def witness(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Witness:
    """A witness whose verifier line the gateways started in the test trust; they sign a
    checkpoint every 4 entries, so that there is something new to cosign."""
    made = Witness(tmp_path / "witness", "witness.example.org/w1")
    monkeypatch.setenv("MANDATE_WITNESS_KEYS", str(made.pub))
    monkeypatch.setenv("MANDATE_CHECKPOINT_EVERY", "4")
    return made


def _log_key(gateway: Gateway, tmp_path: Path) -> Path:
    path = tmp_path / "mandate.pub"
    path.write_text(signing_key(gateway.settings, create=False).vkey + "\n")
    return path


def _propose(gateway: Gateway, count: int) -> None:
    client = gateway.as_role("booking-agent")
    for _ in range(count):
        assert client.post("/v1/actions", json=good_booking()).status_code == 200


def test_a_witness_cosigns_and_the_export_verifies_with_it_required(
    database: Database, serve_gateway: Serve, witness: Witness, tmp_path: Path
) -> None:
    gateway = serve_gateway(database)
    log_key = _log_key(gateway, tmp_path)
    token = gateway.token("witness")
    _propose(gateway, 3)
    first = witness.round(gateway, log_key, token)
    assert first.returncode == 0, first.stderr
    assert "first checkpoint seen" in first.stdout
    _propose(gateway, 3)
    auditor = gateway.as_role("auditor")
    # An export signs a checkpoint of everything; the witness cosigns it, and the next export,
    # with nothing appended since, closes with it.
    assert auditor.get("/v1/ledger/export").status_code == 200
    second = witness.round(gateway, log_key, token)
    assert second.returncode == 0, second.stderr
    assert "cosigned size" in second.stdout
    assert "extends size" in second.stdout

    # The gateway serves the checkpoint with the cosignature it kept.
    served = auditor.get("/v1/ledger/checkpoint").json()
    found, _ = verify_cosignatures(served["note"], [witness.verifier])
    assert [c.witness for c in found] == [witness.verifier]

    export = tmp_path / "ledger.jsonl"
    response = auditor.get("/v1/ledger/export")
    assert response.status_code == 200
    export.write_bytes(response.content)
    verified = _ledger(
        "verify",
        str(export),
        "--public-key",
        str(log_key),
        "--witness-key",
        str(witness.pub),
        "--min-witnesses",
        "1",
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "cosigned by 1 witness(es)" in verified.stdout

    # A witness the verifier is given but that never cosigned: not enough witnesses.
    other = Witness(tmp_path / "other", "witness.example.org/w2")
    unwitnessed = _ledger(
        "verify", str(export), "--public-key", str(log_key), "--witness-key", str(other.pub)
    )
    assert unwitnessed.returncode == 1
    assert "not witnessed" in unwitnessed.stdout


def test_a_rolled_back_log_is_refused_by_the_witness(
    sqlite_database: Database, serve_gateway: Serve, witness: Witness, tmp_path: Path
) -> None:
    gateway = serve_gateway(sqlite_database)
    log_key = _log_key(gateway, tmp_path)
    _propose(gateway, 4)
    assert witness.round(gateway, log_key, gateway.token("witness")).returncode == 0
    # The same key over an empty database: what a restored old backup looks like to a witness.
    restored = tmp_path / "restored"
    restored.mkdir(mode=0o700)
    shutil.copy2(gateway.settings.key_path, restored / gateway.settings.key_path.name)
    other = serve_gateway(Database(f"sqlite:///{tmp_path / 'restored.db'}"), data_dir=restored)
    refused = witness.round(other, log_key, other.token("witness"))
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "REFUSED: rolled back" in refused.stderr
    assert "Traceback" not in refused.stderr


def _post(gateway: Gateway, token: str, size: int, line: str) -> dict[str, object]:
    response = gateway.client(token).post(
        "/v1/ledger/cosignatures", json={"checkpoint_size": size, "cosignature": line}
    )
    return {"status": response.status_code, "body": response.json()}


def test_the_gateway_keeps_only_cosignatures_of_its_own_checkpoints_by_trusted_witnesses(
    sqlite_database: Database, serve_gateway: Serve, witness: Witness
) -> None:
    gateway = serve_gateway(sqlite_database)
    token = gateway.token("witness")
    note = gateway.client(token).get("/v1/ledger/checkpoint").json()["note"]
    text = parse_note(note).text
    size = int(text.splitlines()[1])
    cosigner = Cosigner.from_skey(witness.key.read_text().strip())

    # No checkpoint of that size.
    missing = gateway.client(token).post(
        "/v1/ledger/cosignatures",
        json={"checkpoint_size": size + 7, "cosignature": cosigner.cosign(text, 1)},
    )
    assert fields_named(assert_problem(missing, 422)) == {"checkpoint_size"}

    # A witness this gateway was not told to trust.
    stranger = Cosigner("witness.example.org/stranger", Ed25519PrivateKey.generate())
    unknown = gateway.client(token).post(
        "/v1/ledger/cosignatures",
        json={"checkpoint_size": size, "cosignature": stranger.cosign(text, 1)},
    )
    problem = assert_problem(unknown, 422)
    assert fields_named(problem) == {"cosignature"}
    assert "not a known witness" in problem["detail"]
    assert "MANDATE_WITNESS_KEYS" in problem["detail"]

    # A trusted witness's cosignature of another tree of that size (a fork it was shown).
    origin = text.splitlines()[0]
    forked = sign_checkpoint(
        Checkpoint(origin, size, b"\x07" * 32), signing_key(gateway.settings, create=False)
    )
    fork = gateway.client(token).post(
        "/v1/ledger/cosignatures",
        json={"checkpoint_size": size, "cosignature": cosigner.cosign(parse_note(forked).text, 1)},
    )
    assert fields_named(assert_problem(fork, 422)) == {"cosignature"}
    assert "does not verify" in fork.json()["detail"]

    # Not a line at all.
    garbage = gateway.client(token).post(
        "/v1/ledger/cosignatures", json={"checkpoint_size": size, "cosignature": "hello"}
    )
    assert fields_named(assert_problem(garbage, 422)) == {"cosignature"}

    # None of those reached the checkpoint; the good one does, once however often it is sent.
    for _ in range(2):
        kept = gateway.client(token).post(
            "/v1/ledger/cosignatures",
            json={"checkpoint_size": size, "cosignature": cosigner.cosign(text, 5)},
        )
        assert kept.status_code == 200, kept.text
        assert kept.json()["witness"] == witness.verifier.vkey
    served = gateway.client(token).get("/v1/ledger/checkpoint").json()["note"]
    assert served.count("\n— ") == 2  # the log's signature and the one witness's
    found, _ = verify_cosignatures(served, [witness.verifier])
    assert [c.timestamp for c in found] == [5]


def test_a_witness_token_may_do_nothing_but_witness(
    sqlite_database: Database, serve_gateway: Serve
) -> None:
    gateway = serve_gateway(sqlite_database)
    client = gateway.as_role("witness")
    assert client.get("/v1/ledger/checkpoint").status_code == 200
    assert client.get("/v1/ledger/proofs/consistency", params={"from": 1}).status_code == 200
    for method, path in (
        ("POST", "/v1/actions"),
        ("GET", "/v1/ledger/entries"),
        ("GET", "/v1/ledger/proofs/inclusion"),
        ("GET", "/v1/ledger/export"),
        ("GET", "/v1/autonomy"),
    ):
        problem = assert_problem(client.request(method, path), 403)
        assert "'witness'" in problem["detail"], problem
