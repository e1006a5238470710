"""A setting that cannot be used, from the environment or mandate.toml, is one line naming it
and exit 2 for every command: never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from gateway.cli.main import app

BAD = {
    "not one of the choices": ({"MANDATE_LOG_FORMAT": "xml"}, None, "the setting log_format"),
    "not a number": ({"MANDATE_PORT": "eighty"}, None, "MANDATE_PORT"),
    "not JSON": ({"MANDATE_WEBHOOKS": "{parking"}, None, 'field "webhooks"'),
    "settings that contradict": ({"MANDATE_DISPATCH_LEASE": "1"}, None, "dispatch_lease"),
    "a broken mandate.toml": ({}, "port = [\n", "mandate.toml"),
}


@pytest.mark.parametrize(("env", "toml", "named"), BAD.values(), ids=BAD.keys())
@pytest.mark.parametrize("command", [["token", "list"], ["serve"], ["db", "current"]])
def test_a_setting_that_cannot_be_used_is_one_line_and_exit_2(
    env: dict[str, str],
    toml: str | None,
    named: str,
    command: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    if toml is not None:
        (tmp_path / "mandate.toml").write_text(toml)
    done = CliRunner().invoke(app, command, env={"COLUMNS": "200", **env})
    assert done.exit_code == 2, done.output
    (line,) = done.stderr.splitlines()
    assert line.startswith("error: "), line
    assert named in done.stderr
    assert not (tmp_path / ".mandate").exists()  # nothing made on the way
