"""`mandate serve` on a port another process listens on: one line saying so and how to fix it,
exit 2, and no banner announcing a gateway that will never answer there."""

from __future__ import annotations

import socket
from pathlib import Path

from typer.testing import CliRunner

from gateway.cli.main import app
from tests.gateway.support import POLICIES


def test_serve_on_a_busy_port_fails_before_its_banner(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = CliRunner().invoke(
            app,
            ["serve", "--port", str(port), "--policies", str(POLICIES)],
            env={"MANDATE_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "200"},
        )
    assert done.exit_code == 2
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"error: cannot listen on 127.0.0.1:{port}: Address already in use")
    assert "--port" in line
    assert "Mandate gateway on" not in done.output
