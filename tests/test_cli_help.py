"""Every `mandate` command, present and future, teaches through its `--help`: a help text in
whole sentences for the command and each of its options and arguments, the default of every
option that has one, the environment variables of the one dialect (MANDATE_URL, MANDATE_TOKEN,
MANDATE_DATA_DIR, MANDATE_DATABASE_URL), and nothing that Rich's markup would eat.

The walk covers the whole command tree as click sees it, so a command added later is held to
the same rules without a line here."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import typer
from rich.text import Text
from typer.testing import CliRunner

from gateway.cli.main import app

# The options of the dialect, and the variable each one reads.
DIALECT = {
    "--url": "MANDATE_URL",
    "--token": "MANDATE_TOKEN",
    "--data-dir": "MANDATE_DATA_DIR",
    "--database-url": "MANDATE_DATABASE_URL",
}


def walk(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, command
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from walk(sub, (*path, name))


COMMANDS = list(walk(typer.main.get_command(app)))


def sentence(text: str | None) -> str | None:
    """Why ``text`` is not a help text in whole sentences, or None."""
    text = (text or "").strip()
    if not text:
        return "no help text"
    if not (text[0].isupper() or text[0].isdigit() or text[0] in "`'\""):
        return f"does not start a sentence: {text[:40]!r}"
    if not text.endswith((".", ".)")):
        return f"does not end with a full stop: {text[-40:]!r}"
    if Text.from_markup(text).plain != text:
        return f"has [brackets] that Rich's markup would eat (escape them): {text!r}"
    if "[default:" in text:
        return "writes its default in the help: use show_default= so that it is shown"
    return None


def faults(path: tuple[str, ...], command: Any) -> list[str]:
    where = " ".join(("mandate", *path))
    found: list[str] = []
    summary = (command.help or "").strip().split("\n\n")[0]
    if problem := sentence(summary):
        found.append(f"{where}: its help {problem}")
    for param in command.params:
        if getattr(param, "hidden", False):
            continue
        name = "/".join(param.opts)
        if problem := sentence(getattr(param, "help", None)):
            found.append(f"{where} {name}: its help {problem}")
        if param.param_type_name != "option":
            continue
        plain_flag = param.is_flag and not param.default
        if param.default is not None and not plain_flag and param.show_default is False:
            found.append(f"{where} {name}: has a default ({param.default!r}) it does not show")
        for opt in param.opts:
            if opt in DIALECT and (param.envvar != DIALECT[opt] or not param.show_envvar):
                found.append(f"{where} {opt}: must read (and show) {DIALECT[opt]}")
    return found


def test_the_walk_sees_every_command() -> None:
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"serve", "demo", "token list", "autonomy show", "policy test", "mcp proxy"} <= names


@pytest.mark.parametrize(
    ("path", "command"), COMMANDS, ids=[" ".join(p) or "mandate" for p, _ in COMMANDS]
)
def test_help_teaches_in_whole_sentences_with_defaults_and_the_dialect(
    path: tuple[str, ...], command: Any
) -> None:
    assert faults(path, command) == []
    shown = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "Usage:" in shown.stdout


def test_defaults_given_as_text_are_shown() -> None:
    shown = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"}).stdout
    for default in ("127.0.0.1", "8080", "./.mandate", "./policies", "SQLite in the data dir"):
        # click puts a default given as text in parentheses
        assert f"[default: ({default})]" in shown
    assert "MANDATE_DATA_DIR" in shown
