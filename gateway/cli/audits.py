"""``mandate audits``: the executed actions drawn for audit, and an auditor's findings on
them; through a running gateway."""

from __future__ import annotations

from typing import Annotated, Literal

import typer

from gateway.cli.console import fail
from gateway.cli.remote import (
    DEFAULT_URL,
    AsJson,
    GatewayToken,
    GatewayUrl,
    ask,
    check_status,
    print_list,
)

__all__ = ["audits_app"]

audits_app = typer.Typer(
    help=(
        "Post-hoc audits: the executed actions drawn for audit, and findings on them. Talks to "
        "a running gateway (--url) with an auditor's token (--token or MANDATE_TOKEN)."
    ),
    no_args_is_help=True,
)


@audits_app.command("list")
def audits_list(
    token: GatewayToken,
    status: Annotated[str, typer.Option(help="Which: pending, correct or incorrect.")] = "pending",
    url: GatewayUrl = DEFAULT_URL,
    as_json: AsJson = False,
) -> None:
    """List the audits your token may carry out, oldest first."""
    check_status(status, ("pending", "correct", "incorrect"))
    found = ask(url, token, lambda client: client.audits(status))
    rows = [
        [
            a.id,
            a.action_id,
            a.workflow,
            a.case_type,
            a.executor,
            a.amount or "-",
            str(a.level),
            a.status,
            f"{a.action_type} on {a.resource}",
        ]
        for a in found
    ]
    headers = ["AUDIT", "ACTION", "WORKFLOW", "CASE TYPE", "EXECUTOR", "AMOUNT", "LEVEL"]
    print_list(
        found,
        as_json=as_json,
        empty=f"no {status} audits",
        headers=[*headers, "STATUS", "WHAT"],
        rows=rows,
    )


@audits_app.command("record")
def audits_record(
    audit_id: Annotated[str, typer.Argument(metavar="ID", help="The audit's id (aud_…).")],
    finding: Annotated[str, typer.Argument(metavar="FINDING", help="Correct or incorrect.")],
    token: GatewayToken,
    note: Annotated[str, typer.Option(help="What you found (required if incorrect).")] = "",
    url: GatewayUrl = DEFAULT_URL,
    as_json: AsJson = False,
) -> None:
    """Record a finding on an audited action (an `audit` ledger entry). Exit 1 if it has one."""
    if finding not in ("correct", "incorrect"):
        raise fail(f"the finding is correct or incorrect, not {finding!r}")
    if finding == "incorrect" and not note.strip():
        raise fail("a note is required for an incorrect finding (--note)")
    kind: Literal["correct", "incorrect"] = "correct" if finding == "correct" else "incorrect"
    view = ask(url, token, lambda client: client.record_finding(audit_id, kind, note))
    if as_json:
        print(view.model_dump_json(indent=2))
        return
    print(f"{view.id} {view.status}; action {view.action_id}; ledger #{view.finding_seq}")
