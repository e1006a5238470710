"""``mandate approvals``: held actions waiting for people; list them, approve or reject them,
through a running gateway with an approver's token."""

from __future__ import annotations

from typing import Annotated, Any, Literal

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

__all__ = ["approvals_app"]

approvals_app = typer.Typer(
    help=(
        "Held actions waiting for people: list them, approve or reject them. Talks to a "
        "running gateway (--url) with an approver's token (--token or MANDATE_TOKEN)."
    ),
    no_args_is_help=True,
)


@approvals_app.command("list")
def approvals_list(
    token: GatewayToken,
    status: Annotated[
        str,
        typer.Option(
            help="Only approvals in this state: pending, approved, rejected, expired, superseded "
            "or withdrawn."
        ),
    ] = "pending",
    url: GatewayUrl = DEFAULT_URL,
    as_json: AsJson = False,
) -> None:
    """List the approvals your token may decide (or oversee), newest first.

    One line each: approval id, workflow, case type, executor, amount, confidence, approvals
    so far of the quorum, expiry, and why the action was held.
    """
    from typing import cast

    check_status(status, ("pending", "approved", "rejected", "expired", "superseded", "withdrawn"))
    approvals = ask(url, token, lambda client: client.approvals(cast(Any, status)))
    headers = ["APPROVAL", "WORKFLOW", "CASE TYPE", "EXECUTOR", "AMOUNT", "CONF", "VOTES"]
    rows = [
        [
            a.id,
            a.workflow,
            a.case_type,
            a.executor,
            a.amount or "-",
            a.confidence or "-",
            f"{a.approvals}/{a.quorum}",
            a.expires_at,
            "; ".join(r.code for r in a.reasons) or "-",
        ]
        for a in approvals
    ]
    print_list(
        approvals,
        as_json=as_json,
        empty=f"no {status} approvals",
        headers=[*headers, "EXPIRES", "HELD BECAUSE"],
        rows=rows,
    )


def _vote(
    approval_id: str, approve: bool, reason: str, url: str, token: str, as_json: bool
) -> None:
    verdict: Literal["approve", "reject"] = "approve" if approve else "reject"
    approval = ask(url, token, lambda client: client.decide(approval_id, verdict, reason))
    if as_json:
        print(approval.model_dump_json(indent=2))
        return
    line = f"{approval.id} {approval.status} ({approval.approvals}/{approval.quorum} approvals)"
    if approval.status == "pending":
        line += f"; waiting for {approval.quorum - approval.approvals} more"
    print(f"{line}; action {approval.action_id}")


ApprovalId = Annotated[str, typer.Argument(metavar="ID", help="The approval's id (apr_…).")]


@approvals_app.command("approve")
def approvals_approve(
    approval_id: ApprovalId,
    token: GatewayToken,
    reason: Annotated[str, typer.Option(help="Why (recorded in the ledger).")] = "",
    url: GatewayUrl = DEFAULT_URL,
    as_json: AsJson = False,
) -> None:
    """Approve a held action. At quorum it is approved and carried out.

    Prints the approval's state after your vote. Voting the same way twice counts once; you
    never approve your own proposal (separation of duties). Exit 1 if the approval is no
    longer pending (decided, expired, or re-evaluated after a policy change).
    """
    _vote(approval_id, True, reason, url, token, as_json)


@approvals_app.command("reject")
def approvals_reject(
    approval_id: ApprovalId,
    token: GatewayToken,
    reason: Annotated[
        str, typer.Option(help="Why (required; recorded in the ledger).", show_default=False)
    ],
    url: GatewayUrl = DEFAULT_URL,
    as_json: AsJson = False,
) -> None:
    """Reject a held action: one rejection rejects, and it never runs.

    Exit 1 if the approval is no longer pending (decided, expired, or re-evaluated).
    """
    if not reason.strip():
        raise fail("a reason is required to reject (--reason)")
    _vote(approval_id, False, reason, url, token, as_json)
