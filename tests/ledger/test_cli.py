"""The regulator's command (``python -m ledger verify``) and ``mandate ledger …``, end to end.

Each command runs in a subprocess, as a person would run it: exit codes, what goes to stdout and
what to stderr. The exports come from a real ledger on SQLite.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger import merkle
from ledger.cli import main as ledger_cli
from ledger.database import create_engine
from ledger.export import write_export
from ledger.note import NoteSigner, NoteVerifier
from ledger.store import Ledger

REPO = Path(__file__).resolve().parents[2]
MANDATE = Path(sys.executable).with_name("mandate")
ORIGIN = "test.mandate.example/ledger"


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any MANDATE_* setting, with this checkout first on the path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MANDATE_")}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


def run(args: Sequence[str | Path], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def ledger_verify(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", "ledger", "verify", *args], cwd)


class Built:
    def __init__(self, directory: Path) -> None:
        self.signer = NoteSigner(ORIGIN, Ed25519PrivateKey.generate())
        engine = create_engine(f"sqlite:///{directory / 'mandate.db'}")
        try:
            with Ledger(
                engine, origin=ORIGIN, signer=self.signer, checkpoint_every=5
            ).open() as ledger:
                for i in range(12):
                    ledger.append("decision", actor="a", subject=f"s{i}", body={"n": i})
                self.export = directory / "export.jsonl"
                with self.export.open("wb") as out:
                    self.checkpoint = write_export(ledger, out)
        finally:
            engine.dispose()
        self.key_file = directory / "mandate.pub"
        self.key_file.write_text(self.signer.vkey + "\n")
        self.lines = self.export.read_bytes().splitlines(keepends=True)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return Built(tmp_path_factory.mktemp("cli"))


def tamper(built: Built, tmp_path: Path, seq: int) -> Path:
    lines = list(built.lines)
    lines[seq] = lines[seq].replace(b'"n":', b'"n" :', 1)
    path = tmp_path / "tampered.jsonl"
    path.write_bytes(b"".join(lines))
    return path


# -- python -m ledger verify ------------------------------------------------------------------


def test_a_valid_export_exits_0_with_size_root_and_unanchored(built: Built, tmp_path: Path) -> None:
    done = ledger_verify(built.export, "--public-key", built.key_file, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    first = done.stdout.splitlines()[0]
    assert (
        first == f"VALID: {built.checkpoint.size} entries, root {built.checkpoint.root_hash.hex()}"
    )
    assert "unanchored" in done.stdout
    assert done.stderr == ""  # no progress bar when stderr is not a terminal


def test_a_valid_export_with_a_kept_checkpoint_is_anchored(built: Built, tmp_path: Path) -> None:
    kept = tmp_path / "kept.note"
    kept.write_text(built.checkpoint.note)
    done = ledger_verify(
        built.export, "--public-key", built.key_file, "--trusted-checkpoint", kept, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert "unanchored" not in done.stdout
    assert f"trusted checkpoint of size {built.checkpoint.size}" in done.stdout


def test_a_tampered_export_exits_1_naming_the_seq_first(built: Built, tmp_path: Path) -> None:
    done = ledger_verify(tamper(built, tmp_path, 4), "--public-key", built.key_file, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stdout.splitlines()[0].startswith("TAMPERED: seq 4: ")


def test_json_output(built: Built, tmp_path: Path) -> None:
    done = ledger_verify(built.export, "--public-key", built.key_file, "--json", cwd=tmp_path)
    assert done.returncode == 0
    result = json.loads(done.stdout)
    assert result["valid"] is True
    assert result["size"] == built.checkpoint.size
    assert result["root"] == built.checkpoint.root_hash.hex()
    assert result["tail_unanchored"] is True

    bad = tamper(built, tmp_path, 6)
    done = ledger_verify(bad, "--public-key", built.key_file, "--json", cwd=tmp_path)
    assert done.returncode == 1
    result = json.loads(done.stdout)
    assert result["valid"] is False
    assert result["seq"] == 6
    assert "canonical" in result["problem"]

    done = ledger_verify(
        tmp_path / "nope.jsonl", "--public-key", built.key_file, "--json", cwd=tmp_path
    )
    assert done.returncode == 2
    assert json.loads(done.stdout)["valid"] is None


def test_unusable_input_exits_2(built: Built, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pub"
    garbage.write_text("this is not a verifier key\n")
    empty = tmp_path / "empty.pub"
    empty.write_text("# nothing but a comment\n")
    not_a_note = tmp_path / "kept.note"
    not_a_note.write_text("hello\n")
    cases: list[list[str | Path]] = [
        [tmp_path / "missing.jsonl", "--public-key", built.key_file],
        [built.export, "--public-key", tmp_path / "missing.pub"],
        [built.export, "--public-key", garbage],
        [built.export, "--public-key", empty],
        [built.export, "--public-key", built.key_file, "--trusted-checkpoint", not_a_note],
        [tmp_path, "--public-key", built.key_file],  # a directory
    ]
    for args in cases:
        done = ledger_verify(*args, cwd=tmp_path)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert done.stdout == ""
        assert done.stderr.startswith("error: ")


@pytest.mark.parametrize(
    "args",
    [[], ["verify"], ["verify", "x.jsonl"], ["verify", "x.jsonl", "--public-key"], ["frobnicate"]],
    ids=["nothing", "no-file", "no-key", "key-without-value", "unknown-command"],
)
def test_bad_arguments_exit_2(tmp_path: Path, args: list[str]) -> None:
    done = run([sys.executable, "-m", "ledger", *args], tmp_path)
    assert done.returncode == 2
    assert "usage:" in done.stderr


def test_help_exits_0(tmp_path: Path) -> None:
    done = run([sys.executable, "-m", "ledger", "verify", "--help"], tmp_path)
    assert done.returncode == 0
    assert "--trusted-checkpoint" in done.stdout


def test_main_prints_to_the_current_stdout(
    built: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Embedding the command (a test runner, typer's CliRunner) swaps sys.stdout after import.
    assert ledger_cli(["verify", str(built.export), "--public-key", str(built.key_file)]) == 0
    assert capsys.readouterr().out.startswith("VALID: ")
    assert (
        ledger_cli(["verify", str(tmp_path / "missing"), "--public-key", str(built.key_file)]) == 2
    )
    assert capsys.readouterr().err.startswith("error: ")


# -- mandate ledger … ------------------------------------------------------------------------


def mandate(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run([MANDATE, *args], cwd)


def run_together(
    commands: Sequence[Sequence[str | Path]], cwd: Path
) -> list[subprocess.CompletedProcess[str]]:
    """Run independent commands at the same time (each ``mandate`` start imports a lot)."""
    started = [
        (
            [str(a) for a in command],
            subprocess.Popen(
                [str(a) for a in command],
                cwd=cwd,
                env=clean_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
        )
        for command in commands
    ]
    done = []
    for args, process in started:
        out, err = process.communicate(timeout=120)
        done.append(subprocess.CompletedProcess(args, process.returncode, out, err))
    return done


@pytest.mark.slow
def test_mandate_ledger_commands_end_to_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # no mandate.toml here
    for name in list(os.environ):
        if name.startswith("MANDATE_"):
            monkeypatch.delenv(name)

    # The gateway's storage makes the signing key (mode 0600); public-key prints only its line.
    _append_through_the_gateway_storage(data, 9)
    done = mandate("ledger", "public-key", "--data-dir", data, cwd=work)
    assert done.returncode == 0, done.stderr
    vkey = done.stdout.removesuffix("\n")
    assert done.stdout == vkey + "\n"
    assert "\n" not in vkey
    NoteVerifier.from_vkey(vkey)
    keys = list(data.glob("*.pem"))
    assert [k.name for k in keys] == ["ledger-signing-key.pem"]
    assert stat.S_IMODE(keys[0].stat().st_mode) == 0o600
    public = work / "mandate.pub"
    public.write_text(done.stdout)

    out = work / "ledger.jsonl"
    done = mandate("ledger", "export", "--out", out, "--data-dir", data, cwd=work)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    lines = out.read_bytes().splitlines()
    closing = json.loads(lines[-1])["checkpoint"]
    size = len(lines) - 1
    assert size >= 10
    assert closing.split("\n")[1] == str(size)
    leaves = [merkle.leaf_hash(line) for line in lines[:-1]]
    tampered = list(lines)
    tampered[5] = tampered[5].replace(b'"n":', b'"n" :', 1)
    bad = work / "bad.jsonl"
    bad.write_bytes(b"".join(line + b"\n" for line in tampered))

    by_mandate, by_ledger, inclusion_run, consistency_run, bad_run = run_together(
        [
            [MANDATE, "ledger", "verify", out, "--public-key", public],
            [sys.executable, "-m", "ledger", "verify", out, "--public-key", public],
            [MANDATE, "ledger", "proof", "--seq", "3", "--size", str(size), "--data-dir", data],
            [MANDATE, "ledger", "proof", "--from", "4", "--to", str(size), "--data-dir", data],
            [MANDATE, "ledger", "verify", bad, "--public-key", public],
        ],
        work,
    )
    for verified in (by_mandate, by_ledger):
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert verified.stdout.startswith(
            f"VALID: {size} entries, root {merkle.root_hash(leaves).hex()}"
        )
        assert "unanchored" in verified.stdout

    # Inclusion: the proof holds the export's own line 3 in the tree the export closes with.
    assert inclusion_run.returncode == 0, inclusion_run.stderr
    inclusion = json.loads(inclusion_run.stdout)
    assert inclusion["leaf_hash"] == hashlib.sha256(b"\x00" + lines[3]).hexdigest()
    assert inclusion["tree_size"] == size
    assert inclusion["root_hash"] == merkle.root_hash(leaves).hex()
    assert merkle.verify_inclusion(
        leaves[3], 3, size, [bytes.fromhex(h) for h in inclusion["proof"]], merkle.root_hash(leaves)
    )

    # Consistency: from a tree the auditor rebuilds from the export to the closing one.
    assert consistency_run.returncode == 0, consistency_run.stderr
    consistency = json.loads(consistency_run.stdout)
    assert consistency["root1"] == merkle.root_hash(leaves[:4]).hex()
    assert consistency["root2"] == merkle.root_hash(leaves).hex()
    assert merkle.verify_consistency(
        4,
        size,
        [bytes.fromhex(h) for h in consistency["proof"]],
        merkle.root_hash(leaves[:4]),
        merkle.root_hash(leaves),
    )

    # Tampered: exit 1, the seq on the first line.
    assert bad_run.returncode == 1
    assert bad_run.stdout.splitlines()[0].startswith("TAMPERED: seq 5: ")


def _append_through_the_gateway_storage(data: Path, count: int) -> None:
    """Entries written the way a gateway process writes them, into that data dir."""
    from gateway.db.connect import open_ledger
    from gateway.settings import Settings

    settings: Any = Settings(data_dir=data)
    with open_ledger(settings) as ledger:
        for i in range(count):
            ledger.append("decision", actor="agent", subject=f"change-{i}", body={"n": i})
