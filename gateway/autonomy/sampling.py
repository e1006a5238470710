"""The post-hoc audit sample: drawn when an action is decided, by its id, so anyone can draw
it again from an export alone.

An action that executes at a level whose audit rate (policy data, ``autonomy.audit_rate_bp``) is
``r`` basis points is sampled when

    int.from_bytes(SHA-256(b"mandate/audit/v1:" + action_id)[:8], "big") × 10000 < r × 2^64

and its decision entry records ``"audit": {"rate_bp": r, "sampled": true|false}``: for each
``decision`` entry whose verdict is ``execute`` and that carries ``audit``, hash its subject (the
action id) with that rate. A sampled action starts a pending audit (``audit_row``), which
auditors settle (``gateway.autonomy.audits``).
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

__all__ = ["AUDIT_PREFIX", "audit_id", "audit_row", "sample_value", "sampled"]

AUDIT_PREFIX = b"mandate/audit/v1:"
_BASIS = 10_000
_SPACE = 1 << 64


def sample_value(action_id: str) -> int:
    """The action's place in the sampling space: the first 8 bytes of SHA-256 of the prefix
    and its id, as a big-endian integer (0 ≤ value < 2^64)."""
    return int.from_bytes(hashlib.sha256(AUDIT_PREFIX + action_id.encode()).digest()[:8], "big")


def sampled(action_id: str, rate_bp: int) -> bool:
    """Whether an action executed at audit rate ``rate_bp`` (0..10000) is audited."""
    return sample_value(action_id) * _BASIS < rate_bp * _SPACE


def audit_id(action_id: str) -> str:
    """The id of an action's audit: ``aud_`` and the action id's random part."""
    return f"aud_{action_id.removeprefix('act_')}"


def audit_row(
    action_id: str,
    workflow: str,
    case_type: str,
    level: int,
    rate_bp: int,
    created_at: str,
    decision_seq: int,
    proposer_owner: str,
    summary: dict[str, Any],
) -> dict[str, Any]:
    """The pending audit a sampled action starts with."""
    return {
        "id": audit_id(action_id),
        "action_id": action_id,
        "workflow": workflow,
        "case_type": case_type,
        "level": level,
        "rate_bp": rate_bp,
        "status": "pending",
        "created_at": created_at,
        "decision_seq": decision_seq,
        "proposer_owner": proposer_owner,
        "summary": orjson.dumps(summary),
        "auditor": None,
        "note": None,
        "finding_seq": None,
        "closed_at": None,
    }
