"""Everything a decision writes beside its ledger entries, in the ledger's own transaction
(both land or neither does): the action, its index rows, its approval, its execution intent, its
row of measured figures and, when sampled, its pending audit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa

from gateway.autonomy.figures import figures_row
from gateway.autonomy.sampling import audit_row
from gateway.db.tables import (
    ACTIONS,
    APPROVALS,
    AUDITS,
    EVENTS,
    FIGURES,
    INTENTS,
)
from gateway.decision.history import amount_of, resource_digest
from gateway.decision.personal import Personal
from gateway.decision.steps import Decision
from gateway.execution.routing import Routing, intent_row
from gateway.identity import Identity
from gateway.policy.active import ActivePolicy
from gateway.schemas import ApprovalRef, Proposal
from ledger.store import Appended

__all__ = [
    "Judgement",
    "approval_row",
    "approval_summary",
    "decision_rows",
    "reason_codes",
]


@dataclass(frozen=True)
class Judgement:
    """A decision with everything recorded beside it."""

    decision: Decision
    trace: dict[str, Any]  # as ``Trace`` dumps it
    stats: dict[str, int]
    approval: ApprovalRef | None
    recorded: dict[str, Any]  # the proposal as the ledger keeps it, its sealed values in place
    case_type: str  # as the bundle classified it
    history: dict[str, Any] | None = None  # input.history, recorded beside the figures
    personal: Personal | None = None  # its personal data, sealed in the ledger


def approval_summary(
    identity: Identity, proposal: Proposal, judgement: Judgement
) -> dict[str, Any]:
    """What the inbox shows of a held action without opening the ledger: nothing sealed (a
    workflow may seal even the amount)."""
    personal = judgement.personal
    sealed = personal is not None and "params.amount" in personal.paths
    return {
        "executor": identity.name,
        "action_type": proposal.action_type,
        "resource": proposal.resource,
        "amount": None if sealed else proposal.params.get("amount"),
        "currency": None if sealed else proposal.params.get("currency"),
        "confidence": judgement.recorded.get("confidence"),
        "reasons": [r.model_dump() for r in judgement.decision.reasons],
        "recommendation": judgement.decision.recommendation,
    }


def decision_rows(
    identity: Identity,
    proposal: Proposal,
    digest: str,
    judgement: Judgement,
    action_id: str,
    stored: bytes,
    appended: list[Appended],
    policy: ActivePolicy,
    routing: Routing,
    *,
    audit: dict[str, Any] | None = None,
    figures: bool = True,
) -> list[tuple[sa.Table, dict[str, Any]]]:
    """The gateway's rows, written in the ledger's transaction: both land or neither does.

    With ``figures``, the action's row of measured figures; with an ``audit`` that sampled it,
    its pending audit."""
    created = appended[0].time
    verdict = judgement.decision.verdict
    approval = judgement.approval
    rows: list[tuple[sa.Table, dict[str, Any]]] = [
        (
            ACTIONS,
            {
                "id": action_id,
                "owner": identity.owner,
                "idempotency_key": proposal.idempotency_key,
                "request_digest": digest,
                "executor": identity.name,
                "workflow": proposal.workflow,
                "case_type": judgement.case_type,
                "action_type": proposal.action_type,
                "verdict": verdict,
                "status": _STATUS[verdict],
                "proposal_seq": appended[0].seq,
                "decision_seq": appended[1].seq,
                "decision_leaf": appended[1].leaf_hash.hex(),
                "response": stored,
                "created_at": created,
                "resource_digest": resource_digest(proposal.resource),
            },
        )
    ]
    for entry, kind in zip(appended, ("proposal", "decision", "execution"), strict=False):
        rows.append(
            (EVENTS, {"seq": entry.seq, "action_id": action_id, "kind": kind, "time": entry.time})
        )
    if approval is not None:
        rows.append(
            (
                APPROVALS,
                approval_row(
                    approval, action_id, identity, proposal, judgement, policy, created, digest
                ),
            )
        )
    if verdict == "execute":
        intent = intent_row(action_id, routing, identity.name, proposal.workflow, created)
        if len(appended) == 3:  # handed over to the executor with the decision
            intent |= {"status": "awaiting_outcome", "attempts": 1}
        rows.append((INTENTS, intent))
    level = judgement.trace["autonomy"]["level"]
    if figures:
        row = figures_row(
            action_id,
            proposal.workflow,
            judgement.case_type,
            appended[1].seq,
            judgement.trace["decided_at"],
            level,
            verdict,
            judgement.decision.recommendation,
            warned=bool(judgement.decision.warnings),
            amount=amount_of(proposal.params),
        )
        rows.append((FIGURES, row))
    if audit is not None and audit["sampled"]:
        row = audit_row(
            action_id,
            proposal.workflow,
            judgement.case_type,
            level,
            audit["rate_bp"],
            created,
            appended[1].seq,
            identity.owner,
            approval_summary(identity, proposal, judgement),
        )
        rows.append((AUDITS, row))
    return rows


def reason_codes(reasons: list[dict[str, Any]]) -> str:
    """An approval's reason codes as its ``reason_codes`` column: sorted, each between spaces,
    so that ``LIKE '% code %'`` finds one."""
    return " " + " ".join(sorted({reason["code"] for reason in reasons})) + " "


def approval_row(
    approval: ApprovalRef,
    action_id: str,
    identity: Identity,
    proposal: Proposal,
    judgement: Judgement,
    policy: ActivePolicy,
    created: str,
    digest: str,
) -> dict[str, Any]:
    """The row a held action's approval starts as."""
    summary = approval_summary(identity, proposal, judgement)
    return {
        "id": approval.id,
        "action_id": action_id,
        "workflow": proposal.workflow,
        "case_type": judgement.case_type,
        "status": "pending",
        "quorum": approval.quorum,
        "expires_at": approval.expires_at,
        "created_at": created,
        "bundle_digest": policy.bundle.digest,
        "proposal_digest": digest,
        "proposer_owner": identity.owner,
        "summary": orjson.dumps(summary),
        "closed_at": None,
        "closed_reason": None,
        "executor": summary["executor"],
        "action_type": summary["action_type"],
        "resource": summary["resource"],
        "reason_codes": reason_codes(summary["reasons"]),
    }


_STATUS: dict[str, str] = {"execute": "approved", "hold": "held", "reject": "rejected"}
