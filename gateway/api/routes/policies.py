"""The policy lifecycle over HTTP: the active bundle, activation, shadow mode, replay.

Reading is for policy admins, auditors and governors, changing (activate, shadow, replay) for
policy admins; both with a token not bound to one workflow (a bundle governs all of them).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Generator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from gateway.api.deps import AUTH_PROBLEMS, MAX_INTEGER, Caller, Rt, problem_doc
from gateway.api.strict_json import StrictJSONRoute
from gateway.binding import confine
from gateway.errors import Conflict, InvalidInput
from gateway.identity import Identity
from gateway.lifecycle.activation import PolicyLifecycle, refusal
from gateway.lifecycle.replay import Progress, Replayer, ReplayReport, parse_since
from gateway.lifecycle.views import show_policy, show_shadow
from gateway.policy.active import build_policy
from gateway.policy.bundle import Bundle, BundleError, bundle_from_files
from gateway.policy.rego import EngineError
from gateway.schemas import (
    ActivationView,
    BundleUpload,
    PolicyView,
    ReplayRequest,
    ShadowView,
)
from gateway.server.runtime import Runtime

router = APIRouter(
    prefix="/v1/policies",
    tags=["policies"],
    responses=AUTH_PROBLEMS,
    route_class=StrictJSONRoute,
)

_CHANGE_PROBLEMS: dict[int | str, dict[str, Any]] = {
    403: problem_doc("Not a policy admin, or a token bound to one workflow."),
    409: problem_doc(
        "The slot changed while this bundle was written (try again), or a shadow was asked "
        "for the active bundle."
    ),
    413: problem_doc("The bundle is over `max_bundle_bytes`."),
    422: problem_doc(
        "The bundle does not load, or its Rego tests or decision cases fail, or (with a bundle "
        "key) it is unsigned or not the files signed: `errors` names each failure by file "
        "(`files.<path>`), or `signatures`."
    ),
    503: problem_doc("The ledger did not record the activation: nothing changed."),
}


def _lifecycle(runtime: Runtime) -> PolicyLifecycle:
    lifecycle = runtime.policies
    assert lifecycle is not None
    return lifecycle


def _unbound(identity: Identity) -> None:
    confine(identity, None, "a policy bundle")


def _bundle(files: dict[str, str]) -> Bundle:
    try:
        return bundle_from_files(
            {path: text.encode("utf-8") for path, text in files.items()}, Path("upload")
        )
    except BundleError as exc:
        raise refusal(exc) from None
    except UnicodeEncodeError as exc:
        raise InvalidInput([("files", f"not UTF-8 text: {exc}")]) from None


@router.get(
    "/active",
    response_model=PolicyView,
    summary="The active bundle: digest, who activated it, when, why, and its files",
    responses={
        403: problem_doc(
            "Not a policy admin, auditor or governor, or a token bound to one workflow."
        ),
        422: problem_doc("A parameter is wrong; `errors` names it."),
    },
)
def active(
    runtime: Rt,
    identity: Caller,
    content: Annotated[bool, Query(description="Include each file's text.")] = False,
) -> PolicyView:
    """Every decision's trace names this digest (`trace.bundle_digest`)."""
    _unbound(identity)
    lifecycle = _lifecycle(runtime)
    slot = lifecycle.store.slots()["active"]
    return show_policy(lifecycle, slot, content=content)


@router.post(
    "",
    response_model=ActivationView,
    summary="Activate a bundle, or run it in shadow beside the active one",
    responses=_CHANGE_PROBLEMS,
)
def activate(upload: BundleUpload, runtime: Rt, identity: Caller) -> ActivationView:
    """Checks the bundle (with a bundle key, its signature covers every file; it loads; its
    Rego tests and decision cases pass), then writes a `policy` ledger entry (digest, files
    with their SHA-256, who, why, what the check found, who signed) and puts it in force:
    every gateway process follows within its poll interval; held approvals are re-evaluated
    on their next vote. The same bundle again changes nothing."""
    _unbound(identity)
    lifecycle = _lifecycle(runtime)
    bundle = _bundle(upload.files)
    # A lone surrogate (valid JSON, not UTF-8) cannot be part of a JWT: it fails as any typo.
    signatures = None if upload.signatures is None else upload.signatures.encode(errors="replace")
    activation = lifecycle.activate(
        bundle, slot=upload.mode, by=identity, reason=upload.reason, signatures=signatures
    )
    return ActivationView(
        changed=activation.changed,
        policy=show_policy(lifecycle, activation.slot),
        validation=activation.validation,
    )


@router.get(
    "/shadow",
    response_model=ShadowView,
    summary="The shadow bundle and where it disagrees with the active one",
    responses={
        403: problem_doc(
            "Not a policy admin, auditor or governor, or a token bound to one workflow."
        ),
        422: problem_doc("A parameter is out of range."),
    },
)
def shadow(
    runtime: Rt,
    identity: Caller,
    limit: Annotated[int, Query(ge=1, le=500, description="How many, at most.")] = 100,
    before: Annotated[
        int | None,
        Query(ge=1, le=MAX_INTEGER, description="Only disagreements older than this id."),
    ] = None,
    verdict_changes_only: Annotated[
        bool, Query(description="Leave out those with the same verdict for other reasons.")
    ] = False,
    reasons_only: Annotated[
        bool,
        Query(description="Only those with the same verdict for other reasons (other codes)."),
    ] = False,
) -> ShadowView:
    """Each disagreement has the two verdicts with their reasons, the reason codes the shadow
    adds and drops, the level, and the proposal. Without a running shadow, the last shadow's
    disagreements are listed (if any)."""
    _unbound(identity)
    if verdict_changes_only and reasons_only:
        raise InvalidInput(
            [("reasons_only", "lists what verdict_changes_only leaves out: one or the other")]
        )
    return show_shadow(
        runtime.engine,
        _lifecycle(runtime),
        limit=limit,
        before=before,
        verdict_changes_only=verdict_changes_only,
        reasons_only=reasons_only,
    )


@router.delete(
    "/shadow",
    response_model=ShadowView,
    summary="Stop the shadow bundle",
    responses={
        403: problem_doc("Not a policy admin, or a token bound to one workflow."),
        409: problem_doc("No shadow bundle is running."),
        422: problem_doc("A parameter is out of range."),
    },
)
def stop_shadow(
    runtime: Rt,
    identity: Caller,
    reason: Annotated[str, Query(max_length=2000, description="Why (recorded).")] = "",
) -> ShadowView:
    """Writes a `policy` entry (mode `shadow-stopped`); its disagreements stay listed."""
    _unbound(identity)
    lifecycle = _lifecycle(runtime)
    lifecycle.stop_shadow(by=identity, reason=reason or f"stopped by {identity.name}")
    return shadow(runtime, identity)


_NDJSON = "application/x-ndjson"
_REPLAY_DOC: dict[str, Any] = {
    "description": 'A stream of JSON lines: `{"event": "progress", "scanned", "total", '
    '"decisions", "changed"}` now and then, and last `{"event": "report", ...}`: decisions '
    "replayed, unchanged, changed, `transitions` (from → to with counts), `groups` by "
    "workflow and case type, `rules` (reason codes the candidate adds or removes where the "
    "verdict changes), `reason_changes` (decisions whose verdict stays and whose reason codes "
    "change, grouped by workflow, case type, verdict and the codes added and removed, each "
    "with a count and the first decisions), `examples` per transition with the proposal, and "
    "`input_mismatches` (decisions whose "
    "Rego input could not be rebuilt from the ledger: none, when every input is recorded). A "
    'failure after the stream began ends it with `{"event": "error", "detail": ...}`.',
    "content": {_NDJSON: {"schema": {"type": "object"}}},
}


@router.post(
    "/replay",
    summary="Re-decide the recorded history with a candidate bundle; stream what would change",
    response_class=StreamingResponse,
    responses={
        200: _REPLAY_DOC,
        403: problem_doc("Not a policy admin, or a token bound to one workflow."),
        409: problem_doc("A replay is already running in this process."),
        413: problem_doc("The bundle is over `max_bundle_bytes`."),
        422: problem_doc("The candidate does not load, or `since` is not a date or time."),
    },
)
async def replay(request: ReplayRequest, runtime: Rt, identity: Caller) -> StreamingResponse:
    """Every recorded decision (since `since`) is decided again with the candidate from what
    its entries recorded: the proposal, executor, level, figures and time. Without `files`,
    each decision is replayed with the bundle that made it. Nothing is written. One replay at
    a time per process; it reads the ledger in pages."""
    _unbound(identity)
    lifecycle = _lifecycle(runtime)
    try:
        since = None if request.since is None else parse_since(request.since)
    except ValueError:
        raise InvalidInput(
            [("since", "a date (2026-11-01) or an ISO time (2026-11-01T08:00:00Z)")]
        ) from None
    files = request.files
    bundle = None if files is None else await asyncio.to_thread(_bundle, files)
    if not lifecycle.replaying.acquire(blocking=False):
        raise Conflict("a replay is running in this process; try again when it has ended")
    try:
        candidate = None if bundle is None else await asyncio.to_thread(build_policy, bundle)
    except EngineError as exc:
        lifecycle.replaying.release()
        raise InvalidInput([("files", str(exc))]) from None
    except BaseException:
        lifecycle.replaying.release()
        raise
    replayer = Replayer(
        runtime.ledger,
        runtime.engine,
        candidate,
        recorded=lambda digest: build_policy(lifecycle.store.bundle(digest)),
        since=since,
        examples=request.examples,
    )
    return StreamingResponse(_stream(replayer, lifecycle), media_type=_NDJSON)


async def _stream(replayer: Replayer, lifecycle: PolicyLifecycle) -> AsyncIterator[bytes]:
    """The replay's events as JSON lines; the replay runs on a thread of its own (one regorus
    engine, and the event loop stays free for live decisions)."""
    loop = asyncio.get_running_loop()
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="replay")
    events: Generator[Progress | ReplayReport, None, None] = replayer.events()
    report: ReplayReport | None = None
    try:
        while report is None:
            try:
                event = await loop.run_in_executor(worker, next, events, None)
            except Exception as exc:  # the status is sent already: say it in the stream
                yield orjson.dumps({"event": "error", "detail": str(exc)}) + b"\n"
                return
            if event is None:
                return
            if isinstance(event, ReplayReport):
                report = event
            else:
                yield orjson.dumps(event.to_json()) + b"\n"
    finally:
        with contextlib.suppress(Exception):
            await loop.run_in_executor(worker, events.close)
        worker.shutdown(wait=False)
        lifecycle.replaying.release()
    # Sent once the replay is over and its lock free: a client that starts another replay as
    # soon as it reads this report is not refused.
    yield orjson.dumps(report.to_json()) + b"\n"
