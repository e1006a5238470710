"""The policy bundles as the API and the pages show them: the bundle in a slot, and the shadow
with its disagreements and counts."""

from __future__ import annotations

from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from gateway.db.tables import ACTIONS, SHADOW_DISAGREEMENTS
from gateway.decision.redecide import code_changes
from gateway.lifecycle.activation import PolicyLifecycle
from gateway.lifecycle.slots import Slot
from gateway.policy.bundle import file_manifest
from gateway.schemas import (
    BundleFileView,
    DisagreementView,
    PolicyView,
    Reason,
    ShadowView,
    SideView,
    SignatureView,
)

__all__ = ["show_policy", "show_shadow"]


def show_policy(lifecycle: PolicyLifecycle, slot: Slot, *, content: bool = False) -> PolicyView:
    """The bundle in ``slot``: what it is, who put it there, when and why (files' text with
    ``content``)."""
    assert slot.digest is not None
    bundle = lifecycle.store.bundle(slot.digest)
    signed = lifecycle.ledger.entry(slot.seq).body.get("signature")
    files = [
        BundleFileView(
            **item, content=bundle.files[item["path"]].decode("utf-8") if content else None
        )
        for item in file_manifest(bundle.files)
    ]
    return PolicyView(
        mode="active" if slot.slot == "active" else "shadow",
        digest=slot.digest,
        activated_at=slot.changed_at,
        activated_by=slot.changed_by,
        reason=slot.reason,
        ledger_seq=slot.seq,
        signature=None if signed is None else SignatureView.model_validate(signed),
        workflows=sorted(bundle.workflows),
        files=files,
    )


def show_shadow(
    engine: Engine,
    lifecycle: PolicyLifecycle,
    *,
    limit: int = 100,
    before: int | None = None,
    verdict_changes_only: bool = False,
    reasons_only: bool = False,
) -> ShadowView:
    """The running shadow (or the last one's disagreements), newest first, with its counts."""
    slots = lifecycle.store.slots()
    active_slot = slots["active"]
    shadow_slot = slots.get("shadow")
    running = shadow_slot is not None and shadow_slot.digest is not None
    digest = shadow_slot.digest if running and shadow_slot else _last_shadow(engine)
    table = SHADOW_DISAGREEMENTS
    items: list[DisagreementView] = []
    counts = (0, 0, 0, 0)
    decided = 0
    if digest is not None:
        query = sa.select(table).where(table.c.shadow_digest == digest)
        if verdict_changes_only or reasons_only:
            query = query.where(table.c.verdict_changed.is_(verdict_changes_only))
        if before is not None:
            query = query.where(table.c.id < before)
        with engine.connect() as conn:
            rows = conn.execute(query.order_by(table.c.id.desc()).limit(limit)).all()
            counts = conn.execute(
                sa.select(
                    sa.func.count(),
                    sa.func.count().filter(table.c.verdict_changed.is_(True)),
                    sa.func.count().filter(table.c.shadow_verdict.in_(("error", "refused"))),
                    sa.func.count().filter(table.c.verdict_changed.is_(False)),
                ).where(table.c.shadow_digest == digest)
            ).one()
            if running and shadow_slot is not None:
                decided = conn.execute(
                    sa.select(sa.func.count())
                    .select_from(ACTIONS)
                    .where(ACTIONS.c.created_at >= shadow_slot.changed_at)
                ).scalar_one()
        items = [_disagreement(row) for row in rows]
    runner = lifecycle.shadow
    return ShadowView(
        shadow=show_policy(lifecycle, shadow_slot) if running and shadow_slot else None,
        active_digest=active_slot.digest or "",
        decided_while_running=int(decided),
        disagreements=int(counts[0]),
        verdict_changes=int(counts[1]),
        errors=int(counts[2]),
        reasons_changed=int(counts[3]),
        this_process={
            "compared": runner.compared,
            "disagreements": runner.disagreements,
            "skipped": runner.skipped,
            "pending": runner.pending,
        },
        items=items,
        next_before=items[-1].id if len(items) == limit else None,
    )


def _last_shadow(engine: Engine) -> str | None:
    table = SHADOW_DISAGREEMENTS
    with engine.connect() as conn:
        return conn.execute(
            sa.select(table.c.shadow_digest).order_by(table.c.id.desc()).limit(1)
        ).scalar()


def _disagreement(row: Any) -> DisagreementView:
    detail = orjson.loads(row.detail)
    active, shadow = detail["active"], detail["shadow"]
    added, removed = code_changes(
        (r["code"] for r in active["reasons"]), (r["code"] for r in shadow["reasons"])
    )
    return DisagreementView(
        id=row.id,
        action_id=row.action_id,
        decision_seq=row.decision_seq,
        decided_at=row.decided_at,
        workflow=row.workflow,
        case_type=row.case_type,
        action_type=row.action_type,
        executor=row.executor,
        level=detail["level"],
        verdict_changed=row.verdict_changed,
        codes_added=added,
        codes_removed=removed,
        active=SideView(
            verdict=active["verdict"],
            reasons=[Reason.model_validate(r) for r in active["reasons"]],
        ),
        shadow=SideView(
            verdict=shadow["verdict"],
            reasons=[Reason.model_validate(r) for r in shadow["reasons"]],
            error=shadow.get("error"),
        ),
        proposal=detail["proposal"],
    )
