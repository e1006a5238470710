"""The ledger's status: its size, the latest signed checkpoint, the signing keys with the
tree sizes each signs, and how an auditor verifies an export offline. Read-only."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from gateway.api.deps import Rt
from gateway.web.gate import gate
from gateway.web.render import render_page
from gateway.web.session import open_visit

__all__ = ["router"]

router = APIRouter(prefix="/ui")


def _key_ranges(keys: list[tuple[int, str]]) -> list[dict[str, Any]]:
    """Each signing key with the tree sizes it signs: from its first size up to the size
    before the next key's first (the newest key signs from its first size on: ``last`` None)."""
    lasts: list[int | None] = [first - 1 for first, _ in keys[1:]]
    lasts.append(None)
    return [
        {"vkey": vkey, "first": first, "last": last}
        for (first, vkey), last in zip(keys, lasts, strict=True)
    ]


@router.get("/ledger", response_class=HTMLResponse)
def ledger_page(request: Request, runtime: Rt) -> Response:
    """The ledger's size, its latest signed checkpoint, the signing keys with their ranges,
    and how an auditor verifies an export offline. Read-only."""
    visit = open_visit(request, runtime)
    identity = gate(visit)
    if isinstance(identity, Response):
        return identity
    ledger = runtime.ledger
    # The checkpoint before the size: the log only grows, so the size shown is never smaller
    # than the checkpoint's even if one is signed in between.
    latest = ledger.latest_checkpoint()
    context = {
        "section": "ledger",
        "checkpoint": latest,
        "root": None if latest is None else latest.root_hash.hex(),
        "size": ledger.size(),
        "keys": _key_ranges(ledger.keys()),
        "every": runtime.settings.checkpoint_every,
        "interval": runtime.settings.checkpoint_interval,
    }
    return render_page(visit, "ledger.html", context)
