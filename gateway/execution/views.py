"""An action as the people around it see it: its verdict, where it stands, how it is carried
out, and its ledger timeline. The API (``GET /v1/actions/{id}`` and the routes that answer with
an action) and the approval page both read it here."""

from __future__ import annotations

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from gateway.binding import confine
from gateway.db.tables import ACTIONS, EVENTS, INTENTS
from gateway.errors import Forbidden, NotFound
from gateway.identity import Identity
from gateway.schemas import ActionView, ExecutionView, Verdict
from ledger.store import Ledger

__all__ = ["show_action"]


def show_action(engine: Engine, ledger: Ledger, identity: Identity, action_id: str) -> ActionView:
    """The action with its timeline (each ledger entry about it, body included, sealed values
    revealed until they are erased), if ``identity`` may see it: the proposer's owner, and
    approvers, governors and auditors of its workflow. NotFound if there is no such action,
    Forbidden if they may not look."""
    with engine.connect() as conn:
        row = conn.execute(sa.select(ACTIONS).where(ACTIONS.c.id == action_id)).first()
        if row is None:
            raise NotFound(f"no action {action_id}")
        _may_see(identity, row.id, row.owner, row.workflow)
        intent = conn.execute(
            sa.select(INTENTS.c.adapter, INTENTS.c.status, INTENTS.c.attempts).where(
                INTENTS.c.action_id == action_id
            )
        ).first()
        events = conn.execute(
            sa.select(EVENTS.c.seq, EVENTS.c.kind, EVENTS.c.time)
            .where(EVENTS.c.action_id == action_id)
            .order_by(EVENTS.c.seq)
        ).all()
    timeline = []
    for seq, kind, when in events:
        entry = ledger.entry(seq)
        body = entry.body
        if "sealed" in body:
            # Its personal data put back while it is there; an erased value shows as
            # {"$sealed": commitment, "$erased": seq of the erasure entry}.
            body = ledger.reveal(seq)
        timeline.append(
            {"seq": seq, "kind": kind, "time": when, "actor": entry.actor, "body": body}
        )
    answer = orjson.loads(row.response)
    answer["ledger"] = {
        "proposal_seq": row.proposal_seq,
        "decision_seq": row.decision_seq,
        "leaf_hash": row.decision_leaf,
    }
    return ActionView(
        action_id=row.id,
        status=row.status,
        verdict=row.verdict,
        workflow=row.workflow,
        case_type=row.case_type,
        action_type=row.action_type,
        executor=row.executor,
        created_at=row.created_at,
        decision=Verdict.model_validate(answer),
        execution=None
        if intent is None
        else ExecutionView(adapter=intent.adapter, status=intent.status, attempts=intent.attempts),
        timeline=timeline,
    )


def _may_see(identity: Identity, action_id: str, owner: str, workflow: str) -> None:
    confine(identity, workflow, f"action {action_id}")
    if identity.owner == owner or identity.role in ("governor", "auditor", "approver"):
        return
    raise Forbidden("only the proposer, and approvers, governors and auditors may see an action")
