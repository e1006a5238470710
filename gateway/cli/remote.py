"""The options of the commands that talk to a running gateway through the SDK (--url, --token,
--json), SDK errors as exits, and a list command's answer.

These commands touch no local state (so no --data-dir): they talk to the gateway at --url with
the caller's token, as any approver would. Exit 1 when the approval or action is in a state
that refuses the request (409: already decided, expired, superseded, or re-evaluated after a
policy change); exit 2 when the command cannot be carried out as given (bad token, no such id,
a missing reason, an unreachable gateway).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from gateway.cli.console import err, fail, tabulate

if TYPE_CHECKING:
    from pydantic import BaseModel

    from gateway.client import MandateClient

__all__ = [
    "DEFAULT_URL",
    "AsJson",
    "GatewayToken",
    "GatewayUrl",
    "ask",
    "check_status",
    "print_list",
    "refuse",
]

GatewayUrl = Annotated[
    str,
    typer.Option(
        "--url", envvar="MANDATE_URL", help="The running gateway to talk to.", show_envvar=True
    ),
]
GatewayToken = Annotated[
    str,
    typer.Option(
        "--token",
        envvar="MANDATE_TOKEN",
        help="Your bearer token (from `mandate token create`). Prefer the environment "
        "variable: other users can read command lines in the process list.",
        show_default=False,
        show_envvar=True,
    ),
]
AsJson = Annotated[
    bool, typer.Option("--json", help="Print the gateway's JSON answer instead of text.")
]
DEFAULT_URL = "http://127.0.0.1:8080"

_T = TypeVar("_T")


def refuse(exc: Exception) -> typer.Exit:
    """The exit for an SDK error: 1 for a state that refuses the request (409), else 2."""
    from rich.markup import escape

    from gateway.client import Conflict

    return fail(escape(str(exc)), code=1 if isinstance(exc, Conflict) else 2)


def ask(url: str, token: str, call: Callable[[MandateClient], _T]) -> _T:
    """Run ``call`` on a client of the gateway at ``url``; an SDK error exits (``refuse``)."""
    from gateway.client import MandateClient, MandateError

    try:
        with MandateClient(url, token) as client:
            return call(client)
    except (MandateError, ValueError) as exc:
        raise refuse(exc) from None


def check_status(status: str, states: Sequence[str]) -> None:
    """Exit 2 unless ``status`` is one of ``states``."""
    if status not in states:
        raise fail(f"unknown status {status!r}; one of {', '.join(states)}")


def print_list(
    found: Sequence[BaseModel],
    *,
    as_json: bool,
    empty: str,
    headers: list[str],
    rows: list[list[str]],
) -> None:
    """A list command's answer: JSON, a line saying there is nothing, or columns."""
    if as_json:
        print(json.dumps([item.model_dump(mode="json") for item in found], indent=2))
    elif not found:
        err.print(empty, highlight=False)
    else:
        print(tabulate([headers, *rows]))
