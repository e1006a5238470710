"""Custody on the command line: a command that reads a ledger never makes one.

Tried as a new user would: `mandate ledger export` run in an empty directory, or given a data
dir that does not exist, says there is nothing there and exits 2, leaving the directory as it
found it (no `.mandate/`, no key, no one-entry ledger to hand an auditor as if it were the real
one). A database URL that cannot be used is one line naming it (password hidden) and why, exit
2, whichever command was given it. Each command runs in a subprocess, as a person runs it.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest
import sqlalchemy as sa

from gateway.db.connect import open_ledger
from gateway.settings import Settings
from tests.conftest import Database
from tests.gateway.support import POLICIES
from tests.ledger.test_cli import MANDATE

# Every command that reads a ledger or a database, with the arguments it needs.
READERS: dict[str, list[str]] = {
    "ledger export": ["ledger", "export", "--out", "ledger.jsonl"],
    "ledger checkpoint": ["ledger", "checkpoint"],
    "ledger proof": ["ledger", "proof", "--seq", "0"],
    "ledger public-key": ["ledger", "public-key"],
    "ledger erase": ["ledger", "erase", "--data-subject", "C-1001", "--reason", "art. 17"],
    "db current": ["db", "current"],
    "db check": ["db", "check"],
    "policy replay": ["policy", "replay"],
    "token revoke": ["token", "revoke", "bot"],
}
# And every command that takes --database-url: a bad one is refused by each the same way.
WRITERS: dict[str, list[str]] = {
    "serve": ["serve", "--policies", str(POLICIES), "--port", "1"],
    "token create": ["token", "create", "--name", "bot", "--role", "booking-agent",
                     "--policies", str(POLICIES)],
    "db upgrade": ["db", "upgrade"],
    "policy activate": ["policy", "activate", str(POLICIES), "--reason", "r"],
}  # fmt: skip
TAKING_A_DATABASE = {k: v for k, v in (READERS | WRITERS).items() if k != "ledger public-key"}


def run_all(
    commands: Sequence[Sequence[str]], cwd: Path, env: dict[str, str] | None = None
) -> list[subprocess.CompletedProcess[str]]:
    """Run independent `mandate` commands at once, with no MANDATE_* setting but ``env``'s."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MANDATE_")}
    started = [
        subprocess.Popen(
            [str(MANDATE), *command],
            cwd=cwd,
            env=clean | (env or {}),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for command in commands
    ]
    done = []
    for command, process in zip(commands, started, strict=True):
        out, err = process.communicate(timeout=180)
        done.append(subprocess.CompletedProcess(list(command), process.returncode, out, err))
    return done


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    """The single line a refused command prints on stderr (no traceback, nothing else)."""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, f"{done.args}: {done.stderr}"
    assert "Traceback" not in done.stderr
    return lines[0]


def files_under(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


def test_reading_commands_in_an_empty_directory_make_nothing_and_exit_2(tmp_path: Path) -> None:
    done = run_all(list(READERS.values()), tmp_path)
    for name, result in zip(READERS, done, strict=True):
        assert result.returncode == 2, f"{name}: {result.stdout}{result.stderr}"
        line = one_line(result)
        assert "no data dir" in line, f"{name}: {line}"
        assert str(tmp_path / ".mandate") in line, f"{name}: {line}"
    assert files_under(tmp_path) == []


def test_a_data_dir_that_does_not_exist_is_not_made(tmp_path: Path) -> None:
    missing = tmp_path / "nonexistent" / "dir"
    done = run_all([[*args, "--data-dir", str(missing)] for args in READERS.values()], tmp_path)
    for name, result in zip(READERS, done, strict=True):
        assert result.returncode == 2, f"{name}: {result.stdout}{result.stderr}"
        assert f"no data dir at {missing}" in one_line(result), name
    assert files_under(tmp_path) == []


def make_ledger(data: Path) -> None:
    """A data dir as a gateway leaves it: a database with a ledger, and its keys."""
    with open_ledger(Settings(data_dir=data, policies=POLICIES)) as ledger:
        ledger.append("decision", actor="agent", subject="act-1", body={"n": 1})


def test_a_missing_database_or_key_is_said_and_not_made(tmp_path: Path) -> None:
    keyless, dbless = tmp_path / "keyless", tmp_path / "dbless"
    for data in (keyless, dbless):
        make_ledger(data)
    (keyless / "ledger-signing-key.pem").unlink()
    for database in dbless.glob("mandate.db*"):
        database.unlink()
    before = {d: files_under(d) for d in (keyless, dbless)}

    export, public_key, checkpoint, db_current = run_all(
        [
            ["ledger", "export", "--out", "x.jsonl", "--data-dir", str(keyless)],
            ["ledger", "public-key", "--data-dir", str(keyless)],
            ["ledger", "checkpoint", "--data-dir", str(dbless)],
            ["db", "current", "--data-dir", str(dbless)],
        ],
        tmp_path,
    )
    for result in (export, public_key):
        assert result.returncode == 2, result.stderr
        assert f"no signing key file at {keyless / 'ledger-signing-key.pem'}" in one_line(result)
    for result in (checkpoint, db_current):
        assert result.returncode == 2, result.stderr
        assert f"no database at {dbless / 'mandate.db'}" in one_line(result)
    assert {d: files_under(d) for d in (keyless, dbless)} == before
    assert not (tmp_path / "x.jsonl").exists()


def test_a_postgresql_database_without_a_ledger_is_not_given_one(
    pg_database: Database, tmp_path: Path
) -> None:
    assert pg_database.schema is not None
    key = tmp_path / "data"
    make_ledger(key)  # a key to sign with, so that only the missing ledger stops the export
    env = {
        "MANDATE_DATABASE_URL": pg_database.url,
        "MANDATE_DATABASE_SCHEMA": pg_database.schema,
        "MANDATE_DATA_DIR": str(key),
    }
    export, proof = run_all(
        [["ledger", "export", "--out", "x.jsonl"], ["ledger", "proof", "--seq", "0"]],
        tmp_path,
        env,
    )
    for result in (export, proof):
        assert result.returncode == 2, result.stderr
        line = one_line(result)
        assert "holds no ledger" in line
        assert "postgresql+psycopg://" in line
    engine = sa.create_engine(pg_database.url)
    try:
        with engine.connect() as conn:
            assert sa.inspect(conn).get_table_names(schema=pg_database.schema) == []
    finally:
        engine.dispose()
    assert not (tmp_path / "x.jsonl").exists()


@pytest.mark.parametrize(
    ("url", "shown", "cause"),
    [
        (
            "postgresql+psycopg://mandate:s3cret-pw@127.0.0.1:1/ledger",
            "postgresql+psycopg://mandate:***@127.0.0.1:1/ledger",
            "refused",
        ),
        ("oracle+nope://mandate:s3cret-pw@db.example/ledger", "oracle+nope://mandate:***@", "kind"),
        ("sqlite:////nonexistent/dir/mandate.db", "sqlite:////nonexistent/dir/mandate.db",
         "/nonexistent/dir does not exist"),
    ],
    ids=["refused", "unknown-scheme", "missing-sqlite-dir"],
)  # fmt: skip
def test_a_bad_database_url_is_one_line_naming_it_on_every_command(
    tmp_path: Path, url: str, shown: str, cause: str
) -> None:
    data = tmp_path / "data"
    make_ledger(data)  # keys and all: only the database URL is wrong
    given = ["--data-dir", str(data), "--database-url", url]
    done = run_all([[*args, *given] for args in TAKING_A_DATABASE.values()], tmp_path)
    for name, result in zip(TAKING_A_DATABASE, done, strict=True):
        assert result.returncode == 2, f"{name}: {result.stdout}{result.stderr}"
        line = one_line(result)
        assert shown in line, f"{name}: {line}"
        assert "s3cret-pw" not in line
        assert cause in line, f"{name}: {line}"
