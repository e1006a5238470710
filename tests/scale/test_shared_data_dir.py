"""Processes that share a data dir and start at once (a deployment's gateways, ``mandate serve
--workers N``) must end up with the one webhook key the first of them made: a process that
read the key file before its maker wrote it would sign with an empty key, and one that lost
the race to create it would not start."""

from __future__ import annotations

import stat
import threading
from pathlib import Path

from gateway.execution.routing import load_webhook_secret

STARTERS = 8
ROUNDS = 20  # each on a fresh data dir


def test_starters_at_once_share_one_webhook_key(tmp_path: Path) -> None:
    # Threads released together stand in for the processes: the race is in the file system,
    # and they meet in it far more often than processes do (before the fix, nearly every
    # round went wrong; processes needed dozens of rounds to show it).
    for round_ in range(ROUNDS):
        path = tmp_path / f"data-{round_}" / "webhook-secret"
        start = threading.Barrier(STARTERS)
        got: list[str] = []

        def load(path: Path = path, start: threading.Barrier = start, got: list[str] = got) -> None:
            start.wait()
            try:
                got.append(load_webhook_secret(None, path).decode())
            except Exception as exc:  # what the process would have died of
                got.append(f"{type(exc).__name__}: {exc}")

        starters = [threading.Thread(target=load) for _ in range(STARTERS)]
        for starter in starters:
            starter.start()
        for starter in starters:
            starter.join(timeout=30)
        assert set(got) == {path.read_text()}, f"round {round_}: {set(got)}"
        assert len(got) == STARTERS
        assert len(path.read_text()) == 64
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
