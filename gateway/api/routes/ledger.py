"""The ledger over HTTP: checkpoints, entries, proofs and the export.

A token bound to one workflow reads only the entries about it, and no export: an export is
the whole log (every workflow's entries), which it must be to verify offline. Each entry it
reads still proves its place in the signed log (inclusion proofs carry hashes only, and are
open to every role).
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse
from sqlalchemy.engine import Engine

from gateway.api.deps import AUTH_PROBLEMS, MAX_INTEGER, Caller, Rt, problem_doc
from gateway.api.strict_json import StrictJSONRoute
from gateway.binding import confine
from gateway.db.tables import ACTIONS, AUTONOMY_CHANGES, EVENTS, PROMOTION_VOTES, PROMOTIONS
from gateway.errors import InvalidInput
from gateway.schemas import (
    CheckpointView,
    ConsistencyProofView,
    CosignatureRequest,
    CosignatureView,
    EntryView,
    InclusionProofView,
)
from ledger.entry import parse_entry
from ledger.errors import NoteError, ProofError, SignatureError
from ledger.export import export_lines
from ledger.store import StoredCheckpoint

router = APIRouter(
    prefix="/v1/ledger", tags=["ledger"], responses=AUTH_PROBLEMS, route_class=StrictJSONRoute
)

_PROBLEMS: dict[int | str, dict[str, Any]] = {
    422: problem_doc("A parameter is out of range."),
}
_EXPORT_PROBLEMS: dict[int | str, dict[str, Any]] = _PROBLEMS | {
    403: problem_doc(
        "Not an auditor, governor or policy admin, or a token bound to one workflow (an "
        "export holds every workflow's entries)."
    ),
}


def _view(checkpoint: StoredCheckpoint) -> CheckpointView:
    return CheckpointView(
        size=checkpoint.size, root_hash=checkpoint.root_hash.hex(), note=checkpoint.note
    )


@router.get(
    "/checkpoint",
    response_model=CheckpointView,
    summary="The latest signed checkpoint (tree head)",
    responses=_PROBLEMS,
)
def checkpoint(runtime: Rt, _caller: Caller) -> CheckpointView:
    """Keep it: `mandate ledger verify --trusted-checkpoint` proves an export extends it."""
    latest = runtime.ledger.latest_checkpoint()
    return _view(latest if latest is not None else runtime.ledger.checkpoint())


@router.post(
    "/cosignatures",
    response_model=CosignatureView,
    summary="Keep a witness's cosignature of a checkpoint (witnesses)",
    responses={
        422: problem_doc(
            "No checkpoint of that size, a malformed line, a witness this gateway does not "
            "trust (MANDATE_WITNESS_KEYS), or a cosignature of another tree; `errors` says which."
        )
    },
)
def cosign(request: CosignatureRequest, runtime: Rt, _caller: Caller) -> CosignatureView:
    """`python -m ledger witness` posts here after checking the checkpoint against the last one
    it cosigned. The line must verify, by a witness key of the gateway's `MANDATE_WITNESS_KEYS`
    file, over the checkpoint this ledger signed at `checkpoint_size`; the checkpoint then
    carries it (`GET /v1/ledger/checkpoint`, proofs, and an export that closes with it)."""
    size = request.checkpoint_size
    try:
        cosignature, stored = runtime.ledger.add_cosignature(
            size, request.cosignature, runtime.witnesses
        )
    except KeyError:
        raise InvalidInput(
            [("checkpoint_size", f"this ledger signed no checkpoint of size {size}")]
        ) from None
    except NoteError as exc:
        raise InvalidInput([("cosignature", f"not a cosignature line: {exc}")]) from None
    except SignatureError as exc:
        # Unknown witness, or a line that does not verify over this tree of that size.
        trusted = len(runtime.witnesses)
        raise InvalidInput(
            [
                (
                    "cosignature",
                    f"{exc} (this gateway trusts {trusted} witness keys, those of its "
                    "MANDATE_WITNESS_KEYS file)",
                )
            ]
        ) from None
    return CosignatureView(
        witness=cosignature.witness.vkey, timestamp=cosignature.timestamp, checkpoint=_view(stored)
    )


@router.get(
    "/entries",
    response_model=list[EntryView],
    summary="Entries from a seq on, as stored",
    responses=_PROBLEMS,
)
def entries(
    runtime: Rt,
    identity: Caller,
    start: Annotated[int, Query(ge=0, le=MAX_INTEGER, description="First seq.")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000, description="How many, at most.")] = 100,
) -> list[EntryView]:
    """Auditors, governors and policy admins read entries (bodies may be sensitive). A token
    bound to a workflow gets only the entries about it, up to `limit` from `start` on: its
    actions' (proposal to outcome, votes, audits), its case types' level changes, and its
    promotions with their votes; next page from the last seq + 1."""
    if identity.workflow is None:
        stored = list(runtime.ledger.entries(start, min(start + limit, MAX_INTEGER)))
    else:
        seqs = _about(runtime.engine, identity.workflow, start, limit)
        stored = runtime.ledger.entries_at(seqs)
    return [
        EntryView(
            seq=entry.seq,
            leaf_hash=hashlib.sha256(b"\x00" + data).hexdigest(),
            entry=entry.to_dict(),
        )
        for data in stored
        for entry in (parse_entry(data),)
    ]


def _about(engine: Engine, workflow: str, start: int, limit: int) -> list[int]:
    """The seqs of the first ``limit`` entries about ``workflow`` from ``start`` on, found
    through the gateway's indexes of the ledger."""
    about = sa.union(
        sa.select(EVENTS.c.seq)
        .join(ACTIONS, ACTIONS.c.id == EVENTS.c.action_id)
        .where(ACTIONS.c.workflow == workflow, EVENTS.c.seq >= start),
        sa.select(AUTONOMY_CHANGES.c.seq).where(
            AUTONOMY_CHANGES.c.workflow == workflow, AUTONOMY_CHANGES.c.seq >= start
        ),
        sa.select(PROMOTIONS.c.seq).where(
            PROMOTIONS.c.workflow == workflow, PROMOTIONS.c.seq >= start
        ),
        sa.select(PROMOTION_VOTES.c.seq)
        .join(PROMOTIONS, PROMOTIONS.c.id == PROMOTION_VOTES.c.promotion_id)
        .where(PROMOTIONS.c.workflow == workflow, PROMOTION_VOTES.c.seq >= start),
    ).subquery()
    with engine.connect() as conn:
        rows = conn.execute(sa.select(about.c.seq).order_by(about.c.seq).limit(limit)).all()
    return [int(seq) for (seq,) in rows]


@router.get(
    "/proofs/inclusion",
    response_model=InclusionProofView,
    summary="RFC 9162 inclusion proof of an entry",
    responses=_PROBLEMS,
)
def inclusion(
    runtime: Rt,
    _caller: Caller,
    seq: Annotated[int, Query(ge=0, le=MAX_INTEGER, description="The entry.")],
    size: Annotated[
        int | None,
        Query(
            ge=1,
            le=MAX_INTEGER,
            description="Tree size [default: the latest checkpoint's, if it holds seq].",
        ),
    ] = None,
) -> InclusionProofView:
    """Check with ledger.merkle.verify_inclusion against a checkpoint's root."""
    ledger = runtime.ledger
    if size is None:
        latest = ledger.latest_checkpoint()
        size = latest.size if latest is not None and seq < latest.size else ledger.size()
    try:
        proof = ledger.inclusion_proof(seq, size)
        leaf = ledger.leaf_hash(seq)
        root = ledger.root(size)
    except (ProofError, KeyError) as exc:
        raise InvalidInput(
            [("seq", f"no proof for seq {seq} in a tree of {size}: {exc}")]
        ) from None
    signed = ledger.checkpoint_at(size)
    return InclusionProofView(
        seq=seq,
        tree_size=size,
        leaf_hash=leaf.hex(),
        root_hash=root.hex(),
        proof=[h.hex() for h in proof],
        checkpoint=None if signed is None else _view(signed),
    )


@router.get(
    "/proofs/consistency",
    response_model=ConsistencyProofView,
    summary="RFC 9162 consistency proof between two tree sizes",
    responses=_PROBLEMS,
)
def consistency(
    runtime: Rt,
    _caller: Caller,
    first: Annotated[
        int, Query(alias="from", ge=1, le=MAX_INTEGER, description="The older tree size.")
    ],
    second: Annotated[
        int | None,
        Query(alias="to", ge=1, le=MAX_INTEGER, description="The newer one [default: all]."),
    ] = None,
) -> ConsistencyProofView:
    """Proves the tree of size `to` extends the tree of size `from` (nothing rewritten)."""
    ledger = runtime.ledger
    size2 = second if second is not None else ledger.size()
    try:
        proof = ledger.consistency_proof(first, size2)
        root1, root2 = ledger.root(first), ledger.root(size2)
    except ProofError as exc:
        raise InvalidInput([("from", str(exc))]) from None
    return ConsistencyProofView(
        size1=first,
        size2=size2,
        root1=root1.hex(),
        root2=root2.hex(),
        proof=[h.hex() for h in proof],
    )


@router.get(
    "/export",
    summary="The whole ledger as JSON Lines, ending with a covering checkpoint",
    response_class=StreamingResponse,
    responses=_EXPORT_PROBLEMS
    | {200: {"content": {"application/jsonl": {}}, "description": "The export, streamed."}},
)
def export(runtime: Rt, identity: Caller) -> StreamingResponse:
    """Verify it offline with `python -m ledger verify FILE --public-key KEYFILE`. Not for a
    token bound to a workflow: it holds every workflow's entries."""
    confine(
        identity,
        None,
        "the export (the whole ledger, so that it verifies offline; read your workflow's "
        "entries with GET /v1/ledger/entries and prove each with "
        "GET /v1/ledger/proofs/inclusion)",
    )
    return StreamingResponse(export_lines(runtime.ledger), media_type="application/jsonl")
