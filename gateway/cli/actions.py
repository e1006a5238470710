"""``mandate actions``: where a proposed action stands, with its ledger timeline, through a
running gateway."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from gateway.cli.console import tabulate
from gateway.cli.remote import DEFAULT_URL, AsJson, GatewayToken, GatewayUrl, ask

__all__ = ["actions_app"]

actions_app = typer.Typer(
    help="Proposed actions: where one stands, with its ledger timeline (over HTTP).",
    no_args_is_help=True,
)


@actions_app.command("show")
def actions_show(
    action_id: Annotated[str, typer.Argument(metavar="ID", help="The action's id (act_…).")],
    token: GatewayToken,
    url: GatewayUrl = DEFAULT_URL,
    as_json: AsJson = False,
) -> None:
    """Show an action: its status, verdict and reasons, then its ledger timeline.

    The timeline has one line per ledger entry: seq, time, kind (proposal, decision, approval,
    rejection, expiry, execution, outcome...) and what happened. The proposer, and approvers,
    governors and auditors of its workflow may look.
    """
    action = ask(url, token, lambda client: client.get_action(action_id))
    if as_json:
        print(action.model_dump_json(indent=2))
        return
    decision = action.decision
    facts = [
        ["action", action.action_id],
        ["status", action.status],
        [
            "verdict",
            f"{action.verdict} (recommended {decision.trace.recommendation}, level "
            f"{decision.trace.autonomy.level} {decision.trace.autonomy.name})",
        ],
        ["workflow", f"{action.workflow}, case type {action.case_type}"],
        ["type", action.action_type],
        ["executor", action.executor],
        ["created", action.created_at],
    ]
    for reason in decision.reasons:
        facts.append(["reason", f"{reason.code}: {reason.message} ({reason.source})"])
    if decision.approval is not None:
        facts.append(
            [
                "approval",
                f"{decision.approval.id} (quorum {decision.approval.quorum}, expires "
                f"{decision.approval.expires_at})",
            ]
        )
    print(tabulate(facts))
    print()
    rows = [
        [str(e.get("seq", "")), str(e.get("time", "")), str(e.get("kind", "")), _summary(e)]
        for e in action.timeline
    ]
    print(tabulate([["SEQ", "TIME", "KIND", "WHAT HAPPENED"], *rows]))


def _summary(entry: dict[str, Any], limit: int = 160) -> str:
    """One line saying what a timeline entry records."""
    kind = entry.get("kind")
    body = entry.get("body") or {}
    who = (body.get("voter") or body.get("executor") or {}).get("name", "?")
    if kind == "proposal":
        proposal = body.get("proposal") or {}
        text = f"{who} proposed {proposal.get('action_type')} on {proposal.get('resource')}"
        amount = (proposal.get("params") or {}).get("amount")
        text += f", amount {amount}" if amount is not None else ""
        confidence = proposal.get("confidence")
        text += f", confidence {confidence}" if confidence is not None else ""
    elif kind == "decision":
        codes = ", ".join(r.get("code", "?") for r in body.get("reasons") or [])
        text = str(body.get("verdict"))
        level = ((body.get("trace") or {}).get("autonomy") or {}).get("level")
        text += f" at level {level}" if level is not None else ""
        text += f": {codes}" if codes else ""
        if body.get("approval"):
            text += (
                f"; approval {body['approval'].get('id')} needs {body['approval'].get('quorum')}"
            )
        if body.get("reevaluated"):
            text = f"re-evaluated, {text} ({body['reevaluated'].get('because')})"
    elif kind == "approval":
        text = f"{who} approved" + (f": {body['reason']}" if body.get("reason") else "")
    elif kind == "rejection":
        text = f"{who} rejected: {body.get('reason', '')}"
    elif kind == "expiry":
        text = f"approval {body.get('approval_id')} expired without quorum"
    elif kind == "withdrawal":
        text = f"{who} withdrew it: {body.get('reason', '')}"
    elif kind == "execution" and body.get("result") == "retry":
        text = (
            f"attempt {body.get('attempt')} failed: {body.get('error')}; next attempt at "
            f"{body.get('next_attempt_at')}"
        )
    elif kind == "execution":
        target = f" to {body['target']}" if body.get("target") else ""
        text = f"attempt {body.get('attempt')} via {body.get('adapter')}{target}"
    elif kind == "outcome":
        by = "reported by the executor" if body.get("attempt") is None else "from the adapter"
        detail = body.get("detail")
        text = f"{body.get('status')}, {by}"
        text += f": {json.dumps(detail, sort_keys=True)}" if detail else ""
    elif kind == "exception" and body.get("event") == "opened":
        text = f"handed to people as exception {body.get('exception_id')} ({body.get('cause')})"
    elif kind == "exception":
        verb = "retried" if body.get("event") == "retry" else "marked handled"
        text = f"{entry.get('actor', '?')} {verb} exception {body.get('exception_id')}"
        text += f": {body['note']}" if body.get("note") else ""
    else:
        rest = {k: v for k, v in body.items() if k != "action_id"}
        text = json.dumps(rest, sort_keys=True)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
