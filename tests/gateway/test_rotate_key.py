"""`mandate ledger rotate-key` while two gateways on one database take proposals: both sign with
each new key from their next checkpoint, no proposal fails but with a retryable 503 that says
why, and exports from either verify offline, each key accepted for its own range, from the first
line of `mandate ledger public-key --all` alone. Real gateways on loopback, the CLI and the
verifier as subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from gateway.db.connect import keyring, signing_key
from gateway.settings import Settings
from ledger.keys import generate_signing_key, load_signing_key
from ledger.note import NoteSigner
from tests.conftest import Database
from tests.gateway.support import REPO, Gateway, Serve, good_booking

MANDATE = Path(sys.executable).parent / "mandate"


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("MANDATE_")}
    return subprocess.run(
        args, cwd=REPO, env=base | env, capture_output=True, text=True, timeout=120, check=False
    )


def _env(database: Database, data_dir: Path) -> dict[str, str]:
    env = {"MANDATE_DATA_DIR": str(data_dir), "MANDATE_DATABASE_URL": database.url}
    if database.schema is not None:
        env["MANDATE_DATABASE_SCHEMA"] = database.schema
    return env


class Load:
    """Threads proposing until stopped, keeping every answer that was not a 200."""

    def __init__(self, gateways: list[Gateway], per_gateway: int = 2) -> None:
        self.stop = threading.Event()
        self.ok = 0
        self.failed: list[tuple[int, str]] = []
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._propose, args=(g.as_role("booking-agent"),))
            for g in gateways
            for _ in range(per_gateway)
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _propose(self, client: httpx.Client) -> None:
        while not self.stop.is_set():
            response = client.post("/v1/actions", json=good_booking())
            with self._lock:
                if response.status_code == 200:
                    self.ok += 1
                else:
                    self.failed.append((response.status_code, response.text))

    def wait_for(self, count: int) -> None:
        """Until ``count`` more proposals were answered 200 (bounded by the test's timeout)."""
        goal = self.ok + count
        while self.ok < goal and not self.stop.wait(0.02):
            pass


@pytest.fixture(autouse=True)
def _checkpoint_often(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MANDATE_CHECKPOINT_EVERY", "4")


def test_rotating_twice_under_load(
    database: Database, serve_gateway: Serve, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    first = serve_gateway(database, data_dir=data_dir)
    second = serve_gateway(database, data_dir=data_dir)
    env = _env(database, data_dir)
    original = signing_key(first.settings, create=False).vkey
    made_elsewhere = tmp_path / "elsewhere"
    made_elsewhere.mkdir(mode=0o700)
    rotated: list[str] = []
    with Load([first, second]) as load:
        load.wait_for(10)
        generated = _run([str(MANDATE), "ledger", "rotate-key"], env)
        assert generated.returncode == 0, generated.stderr
        rotated.append(generated.stdout.strip())
        load.wait_for(10)
        # The second time to a key made elsewhere.
        given = made_elsewhere / "new-key.pem"
        generate_signing_key(given, "mandate.local/ledger")
        copied = _run([str(MANDATE), "ledger", "rotate-key", "--new-key", str(given)], env)
        assert copied.returncode == 0, copied.stderr
        rotated.append(copied.stdout.strip())
        load.wait_for(10)
    assert load.failed == [] or all(
        status == 503 and "retry" in text.lower() for status, text in load.failed
    ), load.failed[:3]
    assert len(set([original, *rotated])) == 3
    assert signing_key(first.settings, create=False).vkey == rotated[-1]
    retired = sorted(p.name for p in data_dir.iterdir() if ".retired-" in p.name)
    assert len(retired) == 2

    every = _run([str(MANDATE), "ledger", "public-key", "--all"], env)
    assert every.returncode == 0, every.stderr
    assert every.stdout.split() == [original, *rotated]
    assert every.stderr.count("signs tree sizes from") == 3
    keys = tmp_path / "mandate.pub"
    keys.write_text(every.stdout)
    first_line = tmp_path / "first.pub"
    first_line.write_text(every.stdout.splitlines()[0] + "\n")

    # Each gateway signs the export's closing checkpoint with the newest key, and both verify.
    for number, gateway in enumerate((first, second)):
        export = tmp_path / f"export-{number}.jsonl"
        response = gateway.as_role("auditor").get("/v1/ledger/export")
        assert response.status_code == 200, response.text
        export.write_bytes(response.content)
        for trusted in (keys, first_line):
            verified = _run(
                [
                    sys.executable,
                    "-m",
                    "ledger",
                    "verify",
                    str(export),
                    "--public-key",
                    str(trusted),
                ],
                {},
            )
            assert verified.returncode == 0, verified.stdout + verified.stderr
            assert f"closing checkpoint signed by {rotated[-1]}" in verified.stdout


def test_a_key_that_cannot_be_used_is_one_line_and_exit_2(
    sqlite_database: Database, serve_gateway: Serve, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    serve_gateway(sqlite_database, data_dir=data_dir).stop()
    env = _env(sqlite_database, data_dir)
    before = _run([str(MANDATE), "ledger", "public-key", "--all"], env).stdout
    loose = tmp_path / "loose.pem"
    generate_signing_key(loose, "mandate.local/ledger")
    loose.chmod(0o644)
    for new_key, says in ((tmp_path / "missing.pem", "no signing key file"), (loose, "chmod 600")):
        refused = _run([str(MANDATE), "ledger", "rotate-key", "--new-key", str(new_key)], env)
        assert refused.returncode == 2, refused.stderr
        assert says in refused.stderr
        assert "Traceback" not in refused.stderr
        assert refused.stdout == ""
    # Nothing was rotated: the ledger has the one key it had.
    assert _run([str(MANDATE), "ledger", "public-key", "--all"], env).stdout == before
    assert len(before.split()) == 1


def test_the_keyring_finds_a_key_renamed_while_it_looks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A rotation renames <key>.next to <key> while another process's keyring looks: it read
    # <key> (still the old key), and <key>.next is gone by the time it looks there.
    settings = Settings(data_dir=tmp_path)
    old = generate_signing_key(settings.key_path, settings.ledger_origin)
    staged = settings.key_path.with_name(settings.key_path.name + ".next")
    new = generate_signing_key(staged, settings.ledger_origin)
    assert old.vkey != new.vkey
    reads: list[Path] = []

    def load_then_rename(path: Path, origin: str) -> NoteSigner:
        found = load_signing_key(path, origin)
        reads.append(path)
        if len(reads) == 1:
            os.replace(staged, settings.key_path)  # the rotation finishes, between two reads
        return found

    monkeypatch.setattr("gateway.db.connect.load_signing_key", load_then_rename)
    signer = keyring(settings)(new.vkey)
    assert signer is not None
    assert signer.vkey == new.vkey
