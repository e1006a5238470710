"""``mandate autonomy``: each case type's level and measured figures, promotions the gateway
proposed and the votes on them, levels set by hand; through a running gateway."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

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

if TYPE_CHECKING:
    from gateway.client import MandateClient
    from gateway.schemas import AutonomyDetail

__all__ = ["autonomy_app"]

autonomy_app = typer.Typer(
    help=(
        "Earned autonomy: each case type's level and measured figures, promotions the gateway "
        "proposed, levels set by hand. Talks to a running gateway (--url) with a token "
        "(--token or MANDATE_TOKEN); changing levels takes a governor's."
    ),
    no_args_is_help=True,
)


def _pct(bp: int) -> str:
    """Basis points as a percentage without spaces (one column): 9500 → ``95.00%``."""
    return f"{bp // 100}.{bp % 100:02d}%"


@autonomy_app.command("show")
def autonomy_show(
    token: GatewayToken,
    workflow: Annotated[str | None, typer.Option(help="Only this workflow.")] = None,
    url: GatewayUrl = DEFAULT_URL,
    as_json: AsJson = False,
) -> None:
    """Every case type: its level, the figures of its window and what comes next.

    Columns: workflow, case type, level and its name, decisions, holds, reviewed (execute
    recommendations people judged), agreement, failures and errors (rates in the window), and
    the promotion: a pending one (id and votes), else the next level's unmet criteria.
    """
    views = ask(url, token, lambda client: client.autonomy(workflow))
    rows = []
    for v in views:
        f = v.figures
        if v.pending_promotion is not None:
            p = v.pending_promotion
            nxt = f"{p.id} to {p.to_level} pending ({p.approvals}/{p.quorum})"
        elif v.promotion is None:
            nxt = "-"
        elif v.promotion.met:
            nxt = f"to {v.promotion.level}: criteria met"
        else:
            nxt = f"to {v.promotion.level}: " + "; ".join(v.promotion.unmet)
        rows.append(
            [
                v.workflow,
                v.case_type,
                str(v.level),
                v.name,
                str(f.decisions),
                str(f.holds),
                str(f.reviewed),
                _pct(f.agreement_bp),
                _pct(f.failure_bp),
                _pct(f.error_bp),
                nxt,
            ]
        )
    headers = ["WORKFLOW", "CASE TYPE", "LEVEL", "NAME", "DECISIONS", "HOLDS", "REVIEWED"]
    print_list(
        views,
        as_json=as_json,
        empty="no case types",
        headers=[*headers, "AGREEMENT", "FAILURES", "ERRORS", "PROMOTION"],
        rows=rows,
    )


@autonomy_app.command("set")
def autonomy_set(
    workflow: Annotated[
        str, typer.Argument(metavar="WORKFLOW", help="The workflow, e.g. parking.")
    ],
    case_type: Annotated[
        str, typer.Argument(metavar="CASE_TYPE", help="The case type, e.g. refund.issue.")
    ],
    level: Annotated[
        int,
        typer.Argument(
            metavar="LEVEL", min=1, max=4, help="1 advisory, 2 supervised, 3 conditional, 4 full."
        ),
    ],
    token: GatewayToken,
    reason: Annotated[
        str, typer.Option(help="Why (required; recorded in the ledger).", show_default=False)
    ],
    url: GatewayUrl = DEFAULT_URL,
    as_json: AsJson = False,
) -> None:
    """Set a case type's level by hand (a governor's token), with a reason.

    The change is an `autonomy` ledger entry with the figures at that moment; every gateway
    applies it within a second and starts a new window of figures. Exit 1 if the case type is
    at that level already.
    """
    if not reason.strip():
        raise fail("a reason is required (--reason)")

    def change(client: MandateClient) -> tuple[int, AutonomyDetail]:
        before = client.autonomy_of(workflow, case_type).level
        return before, client.set_level(workflow, case_type, level, reason)

    before, view = ask(url, token, change)
    if as_json:
        print(view.model_dump_json(indent=2))
        return
    print(f"{workflow}/{case_type}: level {before} -> {view.level} ({view.name}); {view.source}")


@autonomy_app.command("promotions")
def autonomy_promotions(
    token: GatewayToken,
    status: Annotated[
        str, typer.Option(help="Which: pending, approved, rejected or superseded.")
    ] = "pending",
    url: GatewayUrl = DEFAULT_URL,
    as_json: AsJson = False,
) -> None:
    """List promotions the gateway proposed, newest first: id, case type, levels, votes, and
    the figures that met the criteria."""
    check_status(status, ("pending", "approved", "rejected", "superseded"))
    found = ask(url, token, lambda client: client.promotions(status))
    rows = [
        [
            p.id,
            p.workflow,
            p.case_type,
            f"{p.from_level}->{p.to_level}",
            f"{p.approvals}/{p.quorum}",
            p.status,
            f"reviewed {p.figures.reviewed}, agreement {_pct(p.figures.agreement_bp)}, "
            f"failures {_pct(p.figures.failure_bp)}, errors {_pct(p.figures.error_bp)}",
        ]
        for p in found
    ]
    headers = ["PROMOTION", "WORKFLOW", "CASE TYPE", "LEVELS", "VOTES", "STATUS", "FIGURES"]
    print_list(found, as_json=as_json, empty=f"no {status} promotions", headers=headers, rows=rows)


def _promotion_vote(
    promotion_id: str, approve: bool, reason: str, url: str, token: str, as_json: bool
) -> None:
    verdict: Literal["approve", "reject"] = "approve" if approve else "reject"
    view = ask(url, token, lambda client: client.decide_promotion(promotion_id, verdict, reason))
    if as_json:
        print(view.model_dump_json(indent=2))
        return
    print(
        f"{view.id} {view.status} ({view.approvals}/{view.quorum} approvals); "
        f"{view.workflow}/{view.case_type} {view.from_level}->{view.to_level}"
    )


PromotionId = Annotated[str, typer.Argument(metavar="ID", help="The promotion's id (prm_…).")]


@autonomy_app.command("approve")
def autonomy_approve(
    promotion_id: PromotionId,
    token: GatewayToken,
    reason: Annotated[str, typer.Option(help="Why (recorded in the ledger).")] = "",
    url: GatewayUrl = DEFAULT_URL,
    as_json: AsJson = False,
) -> None:
    """Approve a proposed promotion (a governor's token). At quorum the level rises.

    Exit 1 if the promotion is no longer pending."""
    _promotion_vote(promotion_id, True, reason, url, token, as_json)


@autonomy_app.command("reject")
def autonomy_reject(
    promotion_id: PromotionId,
    token: GatewayToken,
    reason: Annotated[
        str, typer.Option(help="Why (required; recorded in the ledger).", show_default=False)
    ],
    url: GatewayUrl = DEFAULT_URL,
    as_json: AsJson = False,
) -> None:
    """Reject a proposed promotion: one rejection rejects. Exit 1 if it is no longer pending."""
    if not reason.strip():
        raise fail("a reason is required to reject (--reason)")
    _promotion_vote(promotion_id, False, reason, url, token, as_json)
