"""The Python SDK: ``MandateClient`` (sync), ``AsyncMandateClient`` and ``@governed``.

    from gateway.client import MandateClient

    with MandateClient("http://127.0.0.1:8080", token) as mandate:
        verdict = mandate.propose(workflow="parking", action_type="refund.issue",
                                  resource="booking/B-1", params={"amount": "20.00"},
                                  confidence=0.97)
        if verdict.verdict == "hold":
            action = mandate.wait(verdict.action_id, timeout=600)

The models are the server's own (``gateway.schemas``: ``Verdict``, ``ActionView``,
``ApprovalView``, ``Problem``...), so client and server cannot drift apart. Every error is a
``MandateError``; those the gateway answered carry its RFC 9457 problem details (``.problem``)
and HTTP status (``.status``), and their ``str()`` is the problem's detail.

Retries: a connection that fails, breaks or times out, and a 503 (the gateway failed closed:
nothing was executed), are tried again with exponential backoff and jitter, a bounded number of
times. That is safe for every call: a proposal's retries send the same idempotency key (so the
gateway answers the first verdict again), reads change nothing, a vote repeated while the
approval is pending counts once, and an outcome report that may have landed before its
connection broke is recognised when the retry finds it recorded.

This module needs only ``httpx``, ``pydantic`` and the shared models: none of the server's
dependencies (FastAPI, SQLAlchemy, Casbin, the ledger) are imported.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import enum
import functools
import inspect
import json
import logging
import math
import random
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, NoReturn, ParamSpec, TypeVar, cast

import httpx
from pydantic import ValidationError

from gateway.schemas import (
    ActionView,
    ApprovalView,
    AuditView,
    AutonomyDetail,
    AutonomyView,
    Problem,
    ProblemField,
    PromotionView,
    Reason,
    Verdict,
    WorkflowView,
)

__all__ = [
    "ActionRejected",
    "ApprovalStatus",
    "AsyncMandateClient",
    "Conflict",
    "Forbidden",
    "InvalidInput",
    "InvalidProposal",
    "MandateClient",
    "MandateError",
    "NotFound",
    "OutcomeNotRecorded",
    "OutcomeStatus",
    "Unauthorized",
    "Unavailable",
    "Unreachable",
    "WaitTimeout",
    "governed",
]

log = logging.getLogger("mandate.client")

OutcomeStatus = Literal["succeeded", "failed"]
ApprovalStatus = Literal["pending", "approved", "rejected", "expired", "superseded", "withdrawn"]

DEFAULT_TIMEOUT = 10.0  # seconds per HTTP request
DEFAULT_RETRIES = 3  # further attempts after the first, for connection errors and 503
DEFAULT_BACKOFF = 0.25  # seconds before the first retry; doubles, with jitter
_MAX_BACKOFF = 5.0
_POLL_FIRST = 0.1  # wait(): the first pause between polls, growing by half each time...
_POLL_MAX = 2.0  # ...up to this
_FINAL = frozenset({"rejected", "expired", "withdrawn"})
_USER_AGENT = "mandate-python/0.1.0"
_JSON = {"Content-Type": "application/json"}


# -- errors -----------------------------------------------------------------------------------


class MandateError(Exception):
    """Base of every SDK error.

    ``problem`` is the gateway's RFC 9457 problem details and ``status`` the HTTP status when the
    gateway answered with an error; both are None for errors found on this side (a timeout, a
    rejected action, an unreachable gateway). ``str()`` is the problem's detail.
    """

    def __init__(
        self, message: str, *, problem: Problem | None = None, status: int | None = None
    ) -> None:
        super().__init__(message)
        self.problem = problem
        self.status = status if status is not None else (problem.status if problem else None)

    @property
    def detail(self) -> str:
        """What went wrong, in one line."""
        return str(self)


class Unauthorized(MandateError):
    """401: no token, or an unknown or revoked one."""


class Forbidden(MandateError):
    """403: the token's role may not do this (or it is bound to another workflow, or this is
    the caller's own proposal: separation of duties)."""


class NotFound(MandateError):
    """404: no such action or approval (or the caller may not know of it)."""


class Conflict(MandateError):
    """409: the request contradicts what is recorded: an idempotency key reused for another
    proposal, an approval no longer pending, an action not waiting for an outcome."""


class InvalidInput(MandateError):
    """422: a field is wrong; ``errors`` names each one (``ProblemField(field, message)``)."""

    @property
    def errors(self) -> list[ProblemField]:
        """The fields that were wrong, and why."""
        return list(self.problem.errors or []) if self.problem else []


class InvalidProposal(InvalidInput):
    """422 on a proposal, e.g. ``params.amount`` given as a number instead of a decimal string."""


class Unavailable(MandateError):
    """503: a part the decision depends on failed and the gateway failed closed (nothing was
    executed), after the retries. Trying later is safe."""


class Unreachable(Unavailable):
    """The gateway could not be reached, or the connection broke, after the retries. The
    underlying ``httpx`` error is the ``__cause__``."""


class WaitTimeout(MandateError, TimeoutError):
    """``wait()`` ran out of time while the action was still held. ``action`` is how it stood
    at the last look; the approval stays open, so waiting again later is fine."""

    def __init__(self, message: str, action: ActionView) -> None:
        super().__init__(message)
        self.action = action


class ActionRejected(MandateError):
    """``@governed``: the gateway rejected the action, or its approval was rejected or expired;
    the function was not called. ``verdict`` is the gateway's answer, ``reasons`` its reasons,
    ``action`` the action's final state when it had been held."""

    def __init__(self, verdict: Verdict, action: ActionView | None = None) -> None:
        self.verdict = verdict
        self.action = action
        self.reasons: list[Reason] = list(verdict.reasons)
        super().__init__(_rejection_message(verdict, action))


class OutcomeNotRecorded(MandateError):
    """``@governed``: the function ran and returned ``result``, but reporting its outcome to the
    gateway failed (the cause says why). Report it later with ``report_outcome(action_id, ...)``;
    do not run the function again."""

    def __init__(self, message: str, *, action_id: str, result: Any) -> None:
        super().__init__(message)
        self.action_id = action_id
        self.result = result


_BY_STATUS: dict[int, type[MandateError]] = {
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    422: InvalidInput,
    503: Unavailable,
}


def _error_from(response: httpx.Response, *, proposing: bool = False) -> MandateError:
    """The exception for an error response, with its problem details."""
    try:
        problem = Problem.model_validate_json(response.content)
    except ValidationError:
        # Not from the gateway (a proxy's error page, say): describe it as a problem anyway.
        text = response.text.strip().splitlines()
        problem = Problem(
            title=response.reason_phrase.lower() or "error",
            status=response.status_code,
            detail=f"HTTP {response.status_code} from {response.request.url}"
            + (f": {text[0][:200]}" if text else ""),
        )
    kind = _BY_STATUS.get(response.status_code, MandateError)
    if kind is InvalidInput and proposing:
        kind = InvalidProposal
    message = problem.detail or problem.title
    return kind(message, problem=problem, status=response.status_code)


def _rejection_message(verdict: Verdict, action: ActionView | None) -> str:
    reasons = "; ".join(f"{r.code}: {r.message}" for r in verdict.reasons)
    if verdict.verdict == "reject" or action is None:
        return f"action {verdict.action_id} was rejected" + (f" ({reasons})" if reasons else "")
    if action.status == "expired":
        return f"action {verdict.action_id} was held ({reasons}) and its approval expired"
    if action.status == "withdrawn":
        return f"action {verdict.action_id} was held ({reasons}) and withdrawn by its proposer"
    last = next(
        (e for e in reversed(action.timeline) if e.get("kind") in ("rejection", "decision")), None
    )
    body = (last or {}).get("body") or {}
    if last is not None and last["kind"] == "rejection":
        who = (body.get("voter") or {}).get("name", "an approver")
        return f"action {verdict.action_id} was rejected by {who}: {body.get('reason', '')}"
    why = "; ".join(f"{r['code']}: {r['message']}" for r in body.get("reasons", []))
    return f"action {verdict.action_id} is {action.status}" + (f" ({why})" if why else "")


# -- requests and retries ---------------------------------------------------------------------


def _json_default(value: Any) -> Any:
    """What ``json`` cannot encode itself: money and other decimals become strings."""
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _encode(body: Any) -> bytes:
    return json.dumps(body, default=_json_default, allow_nan=False).encode()


@dataclass(frozen=True)
class _Call:
    method: str
    path: str
    body: Any = None
    params: Mapping[str, str] | None = None
    proposing: bool = False


@dataclass
class _Attempts:
    """The retry schedule of one call: how long to pause before each further attempt."""

    retries: int
    backoff: float
    made: int = 0
    broke: bool = False  # a connection broke after the request may have been sent

    def pause(self, response: httpx.Response | None) -> float | None:
        """Seconds to wait before trying again, or None to stop trying."""
        self.made += 1
        if self.made > self.retries:
            return None
        delay: float = min(_MAX_BACKOFF, self.backoff * 2.0 ** (self.made - 1))
        delay *= 0.5 + random.random() / 2  # noqa: S311 - jitter, not secrecy
        if response is not None:
            after = response.headers.get("Retry-After", "")
            if after.isdigit():
                delay = min(_MAX_BACKOFF, max(delay, float(after)))
        return delay

    def failed(self, exc: httpx.TransportError) -> None:
        if not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
            self.broke = True


def _unreachable(url: str, exc: httpx.TransportError) -> Unreachable:
    what = type(exc).__name__
    return Unreachable(f"the gateway at {url} could not be reached ({what}: {exc})")


class _Common:
    """What the two clients share: settings, headers, bodies and answers."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        retries: int,
        backoff: float,
    ) -> None:
        if retries < 0 or backoff < 0:
            raise ValueError("retries and backoff must not be negative")
        self.url = url.rstrip("/")
        self._retries = retries
        self._backoff = backoff
        self.headers = {
            "Authorization": f"Bearer {token}",
            "Accept": "application/json, application/problem+json",
            "User-Agent": _USER_AGENT,
        }

    def attempts(self) -> _Attempts:
        return _Attempts(self._retries, self._backoff)

    @staticmethod
    def proposal(
        *,
        workflow: str,
        action_type: str,
        resource: str,
        params: Mapping[str, Any] | None,
        case_type: str | None,
        confidence: float | None,
        context: Mapping[str, Any] | None,
        idempotency_key: str | None,
    ) -> _Call:
        body: dict[str, Any] = {
            "workflow": workflow,
            "action_type": action_type,
            "resource": resource,
            "params": dict(params or {}),
            "case_type": case_type,
            "context": dict(context or {}),
            # Made once per call, so that every retry of this call sends the same key.
            "idempotency_key": idempotency_key or f"sdk-{uuid.uuid4().hex}",
        }
        if confidence is not None:
            body["confidence"] = float(confidence)
        return _Call("POST", "/v1/actions", body, proposing=True)

    @staticmethod
    def outcome(
        action_id: str, outcome: bool | OutcomeStatus, details: Mapping[str, Any] | None
    ) -> _Call:
        if isinstance(outcome, bool):
            status = "succeeded" if outcome else "failed"
        elif outcome in ("succeeded", "failed"):
            status = outcome
        else:
            raise ValueError(f"outcome must be a bool, 'succeeded' or 'failed', not {outcome!r}")
        body = {"status": status, "details": dict(details or {})}
        return _Call("POST", f"/v1/actions/{_segment(action_id)}/outcome", body)

    @staticmethod
    def withdrawal(action_id: str, reason: str) -> _Call:
        body = {"reason": reason}
        return _Call("POST", f"/v1/actions/{_segment(action_id)}/withdraw", body)

    @staticmethod
    def vote(approval_id: str, decision: Literal["approve", "reject"], reason: str) -> _Call:
        if decision not in ("approve", "reject"):
            raise ValueError(f"decision must be 'approve' or 'reject', not {decision!r}")
        body = {"decision": decision, "reason": reason}
        return _Call("POST", f"/v1/approvals/{_segment(approval_id)}/decisions", body)

    @staticmethod
    def recorded(view: ActionView, call: _Call) -> bool:
        """Whether the outcome this call reports is the one the action already has: then an
        earlier attempt whose answer was lost did record it."""
        last = next((e for e in reversed(view.timeline) if e.get("kind") == "outcome"), None)
        if last is None:
            return False
        body = last.get("body") or {}
        wanted = json.loads(_encode(call.body))
        return bool(
            body.get("attempt") is None
            and body.get("status") == wanted["status"]
            and body.get("detail") == wanted["details"]
        )


def _segment(value: str) -> str:
    """An id as one path segment: nothing in it can reach another endpoint."""
    if not value or "/" in value or value in (".", ".."):
        raise ValueError(f"not an id: {value!r}")
    return urllib.parse.quote(value, safe="")


def _approvals_query(status: ApprovalStatus) -> dict[str, str]:
    return {"status": status}


# -- the sync client --------------------------------------------------------------------------


class MandateClient:
    """A client of one gateway, for one token. Use it as a context manager, or ``close()`` it.

    ``timeout`` is per HTTP request; ``retries`` bounds the further attempts after a connection
    error or a 503, with a backoff that starts at ``backoff`` seconds and doubles (with jitter).
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        backoff: float = DEFAULT_BACKOFF,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._common = _Common(url, token, retries=retries, backoff=backoff)
        self._http = httpx.Client(
            base_url=self._common.url,
            headers=self._common.headers,
            timeout=timeout,
            transport=transport,
        )

    @property
    def url(self) -> str:
        """The gateway's base URL."""
        return self._common.url

    def __enter__(self) -> MandateClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def _send(self, call: _Call, attempts: _Attempts | None = None) -> httpx.Response:
        attempts = attempts or self._common.attempts()
        content = None if call.body is None else _encode(call.body)
        headers = None if content is None else _JSON
        while True:
            try:
                response = self._http.request(
                    call.method, call.path, content=content, params=call.params, headers=headers
                )
            except httpx.TransportError as exc:
                attempts.failed(exc)
                delay = attempts.pause(None)
                if delay is None:
                    raise _unreachable(self.url, exc) from exc
                log.info("retrying %s %s in %.2fs after %r", call.method, call.path, delay, exc)
                time.sleep(delay)
                continue
            if response.status_code == 503:
                delay = attempts.pause(response)
                if delay is not None:
                    log.info("retrying %s %s in %.2fs after 503", call.method, call.path, delay)
                    time.sleep(delay)
                    continue
            if response.is_success:
                return response
            raise _error_from(response, proposing=call.proposing)

    def propose(
        self,
        *,
        workflow: str,
        action_type: str,
        resource: str,
        params: Mapping[str, Any] | None = None,
        case_type: str | None = None,
        confidence: float | None = None,
        context: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Verdict:
        """Propose an action; the answer is ``execute``, ``hold`` or ``reject`` with reasons and
        a trace.

        ``case_type`` is the bundle's to decide: leave it out, or name the one you expect (a
        claim the bundle contradicts is refused). Amounts go in ``params`` as decimal strings
        (``Decimal`` values are sent as strings). Without an ``idempotency_key`` one is made
        for this call; its retries reuse it, so the gateway decides once. Pass your own key
        (the business operation's id) to make separate calls for the same operation safe too.

        Raises ``InvalidProposal`` (422, with ``.errors``), ``Conflict`` (409: the key was used
        for another proposal), ``Unauthorized``, ``Forbidden``, ``Unavailable``.
        """
        call = self._common.proposal(
            workflow=workflow,
            action_type=action_type,
            resource=resource,
            params=params,
            case_type=case_type,
            confidence=confidence,
            context=context,
            idempotency_key=idempotency_key,
        )
        return Verdict.model_validate_json(self._send(call).content)

    def get_action(self, action_id: str) -> ActionView:
        """An action's status (``approved``, ``held``, ``rejected``, ``expired``,
        ``succeeded``, ``failed``), its verdict and its ledger timeline."""
        response = self._send(_Call("GET", f"/v1/actions/{_segment(action_id)}"))
        return ActionView.model_validate_json(response.content)

    def wait(self, action_id: str, timeout: float) -> ActionView:
        """Poll, with growing pauses, until the action is no longer ``held``, and return it.

        The final state is ``approved`` (go ahead; a callback action then waits for
        ``report_outcome``), ``rejected`` or ``expired`` (never runs), or, when the gateway
        carried it out itself through a webhook, ``succeeded`` or ``failed``. Raises
        ``WaitTimeout`` (a ``TimeoutError``) when ``timeout`` seconds pass first.
        """
        deadline = time.monotonic() + timeout
        pause = _POLL_FIRST
        while True:
            view = self.get_action(action_id)
            left = deadline - time.monotonic()
            if view.status != "held":
                return view
            if left <= 0:
                raise WaitTimeout(
                    f"action {action_id} is still held after {timeout:g}s", action=view
                )
            time.sleep(min(pause, left))
            pause = min(_POLL_MAX, pause * 1.5)

    def report_outcome(
        self,
        action_id: str,
        outcome: bool | OutcomeStatus,
        details: Mapping[str, Any] | None = None,
    ) -> ActionView:
        """Report how an action you carried out yourself ended (the callback adapter):
        ``True``/``"succeeded"`` or ``False``/``"failed"``, with optional JSON ``details``.

        Only the proposing executor may report, once, and only for an allowed action routed to
        the callback adapter; otherwise ``Forbidden`` or ``Conflict``.
        """
        call = self._common.outcome(action_id, outcome, details)
        attempts = self._common.attempts()
        try:
            response = self._send(call, attempts)
        except Conflict:
            if attempts.broke:  # the first attempt may have landed: is this its outcome?
                view = self.get_action(action_id)
                if self._common.recorded(view, call):
                    return view
            raise
        return ActionView.model_validate_json(response.content)

    def withdraw(self, action_id: str, reason: str) -> ActionView:
        """Take back a held action of yours that nobody will carry out (you stopped waiting for
        it): its approval closes as ``withdrawn`` and it never executes. ``Conflict`` once it is
        decided (look with ``get_action``: an approval that came just now stands)."""
        call = self._common.withdrawal(action_id, reason)
        return ActionView.model_validate_json(self._send(call).content)

    def workflow(self, workflow: str) -> WorkflowView:
        """What ``workflow`` takes: its action types, the case types each may be, and which of
        them this token's role may propose."""
        response = self._send(_Call("GET", f"/v1/workflows/{_segment(workflow)}"))
        return WorkflowView.model_validate_json(response.content)

    def approvals(self, status: ApprovalStatus = "pending") -> list[ApprovalView]:
        """Approvals this token may decide or oversee, newest first."""
        response = self._send(_Call("GET", "/v1/approvals", params=_approvals_query(status)))
        return [ApprovalView.model_validate(item) for item in response.json()]

    def get_approval(self, approval_id: str) -> ApprovalView:
        """One approval with its votes."""
        response = self._send(_Call("GET", f"/v1/approvals/{_segment(approval_id)}"))
        return ApprovalView.model_validate_json(response.content)

    def decide(
        self, approval_id: str, decision: Literal["approve", "reject"], reason: str = ""
    ) -> ApprovalView:
        """Approve or reject a held action (rejecting needs a reason). Returns the approval as it
        stands after the vote; ``Conflict`` when it is no longer pending.

        Voting the same way twice counts once while the approval is pending. If a connection
        broke after the vote was sent and that very vote closed the approval, the retry is
        answered ``Conflict``: look with ``get_approval`` to see whose vote closed it.
        """
        call = self._common.vote(approval_id, decision, reason)
        return ApprovalView.model_validate_json(self._send(call).content)

    # -- earned autonomy and audits ---------------------------------------------------------

    def autonomy(self, workflow: str | None = None) -> list[AutonomyView]:
        """Every case type's level, figures, next level's criteria and pending promotion."""
        params = None if workflow is None else {"workflow": workflow}
        response = self._send(_Call("GET", "/v1/autonomy", params=params))
        return [AutonomyView.model_validate(item) for item in response.json()]

    def autonomy_of(self, workflow: str, case_type: str) -> AutonomyDetail:
        """One case type, with its changes of level and its figures day by day."""
        path = f"/v1/autonomy/{_segment(workflow)}/{_segment(case_type)}"
        return AutonomyDetail.model_validate_json(self._send(_Call("GET", path)).content)

    def set_level(self, workflow: str, case_type: str, level: int, reason: str) -> AutonomyDetail:
        """Set a case type's level by hand (a governor's token), with a reason for the ledger.
        ``Conflict`` when it is at that level already."""
        path = f"/v1/autonomy/{_segment(workflow)}/{_segment(case_type)}"
        call = _Call("POST", path, {"level": level, "reason": reason})
        return AutonomyDetail.model_validate_json(self._send(call).content)

    def promotions(self, status: str = "pending") -> list[PromotionView]:
        """Promotions the gateway proposed, newest first."""
        response = self._send(_Call("GET", "/v1/autonomy/promotions", params={"status": status}))
        return [PromotionView.model_validate(item) for item in response.json()]

    def decide_promotion(
        self, promotion_id: str, decision: Literal["approve", "reject"], reason: str = ""
    ) -> PromotionView:
        """A governor approves or rejects a proposed promotion (rejecting needs a reason)."""
        path = f"/v1/autonomy/promotions/{_segment(promotion_id)}/decisions"
        call = _Call("POST", path, {"decision": decision, "reason": reason})
        return PromotionView.model_validate_json(self._send(call).content)

    def audits(self, status: str = "pending") -> list[AuditView]:
        """Executed actions drawn for audit that this token may audit, oldest first."""
        response = self._send(_Call("GET", "/v1/audits", params={"status": status}))
        return [AuditView.model_validate(item) for item in response.json()]

    def record_finding(
        self, audit_id: str, finding: Literal["correct", "incorrect"], note: str = ""
    ) -> AuditView:
        """An auditor's finding on an executed action (an incorrect one needs a note)."""
        call = _Call("POST", f"/v1/audits/{_segment(audit_id)}", {"finding": finding, "note": note})
        return AuditView.model_validate_json(self._send(call).content)


# -- the async client -------------------------------------------------------------------------


class AsyncMandateClient:
    """``MandateClient`` for asyncio: the same methods, awaited. Use ``async with``, or
    ``await aclose()``."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        backoff: float = DEFAULT_BACKOFF,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._common = _Common(url, token, retries=retries, backoff=backoff)
        self._http = httpx.AsyncClient(
            base_url=self._common.url,
            headers=self._common.headers,
            timeout=timeout,
            transport=transport,
        )

    @property
    def url(self) -> str:
        """The gateway's base URL."""
        return self._common.url

    async def __aenter__(self) -> AsyncMandateClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    async def _send(self, call: _Call, attempts: _Attempts | None = None) -> httpx.Response:
        attempts = attempts or self._common.attempts()
        content = None if call.body is None else _encode(call.body)
        headers = None if content is None else _JSON
        while True:
            try:
                response = await self._http.request(
                    call.method, call.path, content=content, params=call.params, headers=headers
                )
            except httpx.TransportError as exc:
                attempts.failed(exc)
                delay = attempts.pause(None)
                if delay is None:
                    raise _unreachable(self.url, exc) from exc
                log.info("retrying %s %s in %.2fs after %r", call.method, call.path, delay, exc)
                await asyncio.sleep(delay)
                continue
            if response.status_code == 503:
                delay = attempts.pause(response)
                if delay is not None:
                    log.info("retrying %s %s in %.2fs after 503", call.method, call.path, delay)
                    await asyncio.sleep(delay)
                    continue
            if response.is_success:
                return response
            raise _error_from(response, proposing=call.proposing)

    async def propose(
        self,
        *,
        workflow: str,
        action_type: str,
        resource: str,
        params: Mapping[str, Any] | None = None,
        case_type: str | None = None,
        confidence: float | None = None,
        context: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Verdict:
        """See ``MandateClient.propose``."""
        call = self._common.proposal(
            workflow=workflow,
            action_type=action_type,
            resource=resource,
            params=params,
            case_type=case_type,
            confidence=confidence,
            context=context,
            idempotency_key=idempotency_key,
        )
        return Verdict.model_validate_json((await self._send(call)).content)

    async def get_action(self, action_id: str) -> ActionView:
        """See ``MandateClient.get_action``."""
        response = await self._send(_Call("GET", f"/v1/actions/{_segment(action_id)}"))
        return ActionView.model_validate_json(response.content)

    async def wait(self, action_id: str, timeout: float) -> ActionView:
        """See ``MandateClient.wait``."""
        deadline = time.monotonic() + timeout
        pause = _POLL_FIRST
        while True:
            view = await self.get_action(action_id)
            left = deadline - time.monotonic()
            if view.status != "held":
                return view
            if left <= 0:
                raise WaitTimeout(
                    f"action {action_id} is still held after {timeout:g}s", action=view
                )
            await asyncio.sleep(min(pause, left))
            pause = min(_POLL_MAX, pause * 1.5)

    async def report_outcome(
        self,
        action_id: str,
        outcome: bool | OutcomeStatus,
        details: Mapping[str, Any] | None = None,
    ) -> ActionView:
        """See ``MandateClient.report_outcome``."""
        call = self._common.outcome(action_id, outcome, details)
        attempts = self._common.attempts()
        try:
            response = await self._send(call, attempts)
        except Conflict:
            if attempts.broke:  # the first attempt may have landed: is this its outcome?
                view = await self.get_action(action_id)
                if self._common.recorded(view, call):
                    return view
            raise
        return ActionView.model_validate_json(response.content)

    async def withdraw(self, action_id: str, reason: str) -> ActionView:
        """See ``MandateClient.withdraw``."""
        call = self._common.withdrawal(action_id, reason)
        return ActionView.model_validate_json((await self._send(call)).content)

    async def workflow(self, workflow: str) -> WorkflowView:
        """See ``MandateClient.workflow``."""
        response = await self._send(_Call("GET", f"/v1/workflows/{_segment(workflow)}"))
        return WorkflowView.model_validate_json(response.content)

    async def approvals(self, status: ApprovalStatus = "pending") -> list[ApprovalView]:
        """See ``MandateClient.approvals``."""
        call = _Call("GET", "/v1/approvals", params=_approvals_query(status))
        response = await self._send(call)
        return [ApprovalView.model_validate(item) for item in response.json()]

    async def get_approval(self, approval_id: str) -> ApprovalView:
        """See ``MandateClient.get_approval``."""
        response = await self._send(_Call("GET", f"/v1/approvals/{_segment(approval_id)}"))
        return ApprovalView.model_validate_json(response.content)

    async def decide(
        self, approval_id: str, decision: Literal["approve", "reject"], reason: str = ""
    ) -> ApprovalView:
        """See ``MandateClient.decide``."""
        call = self._common.vote(approval_id, decision, reason)
        return ApprovalView.model_validate_json((await self._send(call)).content)


# -- @governed --------------------------------------------------------------------------------

P = ParamSpec("P")
R = TypeVar("R")
_SKIP = object()


def _jsonable(value: Any) -> Any:
    """``value`` as JSON (decimals as strings), or ``_SKIP`` when it has no JSON form."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else _SKIP
    if isinstance(value, enum.Enum):
        return _jsonable(value.value)
    if isinstance(value, decimal.Decimal | dt.datetime | dt.date | dt.time | uuid.UUID):
        return _json_default(value)
    if isinstance(value, list | tuple | set | frozenset):
        items = [_jsonable(item) for item in value]
        return _SKIP if any(item is _SKIP for item in items) else items
    if isinstance(value, Mapping):
        if not all(isinstance(key, str) for key in value):
            return _SKIP
        pairs = {key: _jsonable(item) for key, item in value.items()}
        return _SKIP if any(item is _SKIP for item in pairs.values()) else pairs
    return _SKIP


def _bound_params(signature: inspect.Signature, args: Any, kwargs: Any) -> dict[str, Any]:
    """The call's arguments by name, those with a JSON form (``self``, clients and the like
    are left out); ``**kwargs`` are spread in."""
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    params: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        kind = signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            for key, item in value.items():
                converted = _jsonable(item)
                if converted is not _SKIP:
                    params[key] = converted
            continue
        converted = _jsonable(value)
        if converted is not _SKIP:
            params[name] = converted
    return params


@dataclass(frozen=True)
class _Governance:
    """What ``@governed`` was told, and how it turns one call into a proposal."""

    workflow: str
    action_type: str
    case_type: str | None
    resource: str | Callable[..., str]
    confidence: float | Callable[..., float | None] | None
    params: Callable[..., Mapping[str, Any]] | None
    context: Mapping[str, Any] | Callable[..., Mapping[str, Any]] | None
    idempotency_key: Callable[..., str] | None
    wait_timeout: float
    details: Callable[[Any], Mapping[str, Any]] | None
    signature: inspect.Signature
    name: str

    def proposal(self, args: Any, kwargs: Any) -> dict[str, Any]:
        def given(value: Any) -> Any:
            return value(*args, **kwargs) if callable(value) else value

        params = (
            self.params(*args, **kwargs)
            if self.params is not None
            else _bound_params(self.signature, args, kwargs)
        )
        return {
            "workflow": self.workflow,
            "action_type": self.action_type,
            "case_type": self.case_type,
            "resource": given(self.resource),
            "confidence": given(self.confidence),
            "params": params,
            "context": given(self.context),
            "idempotency_key": given(self.idempotency_key),
        }

    def go_ahead(self, verdict: Verdict, action: ActionView | None) -> None:
        """Raise unless the function may run now."""
        if verdict.verdict == "reject":
            raise ActionRejected(verdict)
        adapter = verdict.execution.adapter if verdict.execution else "callback"
        if adapter != "callback":
            raise MandateError(
                f"action {verdict.action_id} is carried out by the {adapter} adapter (a webhook "
                f"is configured for this executor or workflow), so {self.name} is not run here"
            )
        if action is None:
            return
        if action.status in _FINAL:
            raise ActionRejected(verdict, action)
        if action.status != "approved":
            raise MandateError(
                f"action {verdict.action_id} is {action.status}: it was carried out without "
                f"this process (a webhook adapter?), so {self.name} is not run here"
            )

    def gave_up(self) -> str:
        """Why a held call that timed out is withdrawn (the ledger and the approvers see it)."""
        return f"@governed {self.name}: no decision within {self.wait_timeout:g} s"

    def success(self, result: Any) -> dict[str, Any]:
        return dict(self.details(result)) if self.details is not None else {}

    @staticmethod
    def failure(exc: Exception) -> dict[str, Any]:
        return {"error": type(exc).__name__, "message": str(exc)[:2000]}

    def not_waiting(self, action_id: str, exc: Conflict) -> None:
        log.warning(
            "the outcome of %s (action %s) was not recorded: %s. @governed expects the "
            "callback adapter; is a webhook configured for this executor or workflow?",
            self.name,
            action_id,
            exc,
        )


def governed(
    client: MandateClient | AsyncMandateClient,
    *,
    workflow: str,
    action_type: str,
    resource: str | Callable[..., str],
    case_type: str | None = None,
    confidence: float | Callable[..., float | None] | None = None,
    params: Callable[..., Mapping[str, Any]] | None = None,
    context: Mapping[str, Any] | Callable[..., Mapping[str, Any]] | None = None,
    idempotency_key: Callable[..., str] | None = None,
    wait_timeout: float = 300.0,
    details: Callable[[Any], Mapping[str, Any]] | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Route every call of the decorated function through the gateway first.

    1. The call becomes a proposal. ``resource``, ``confidence``, ``context`` and
       ``idempotency_key`` are values or callables that get the function's arguments;
       ``params`` is such a callable, and by default the call's arguments by name (those with
       a JSON form; ``Decimal`` as strings, so money stays exact). ``case_type`` is the
       bundle's to decide (leave it out); the key, by default, is new for every call.
    2. ``reject``: ``ActionRejected`` is raised and the function is not called.
       ``hold``: the call waits (up to ``wait_timeout`` seconds) for the approval; rejected or
       expired raises ``ActionRejected`` without calling the function. When the time runs out,
       the held action is withdrawn (nobody would run it if it were approved later) and
       ``WaitTimeout`` is raised; an approval that came just before the withdrawal stands.
    3. ``execute``, or approved: the function runs, once.
    4. Its outcome is reported (the callback adapter): ``succeeded`` with ``details(result)``
       if given, or ``failed`` with the exception's type and message, and the exception is
       re-raised. A gateway that refuses the report (409: the action is carried out by a
       webhook, not by this process) is logged as a warning. If the report fails otherwise,
       ``OutcomeNotRecorded`` carries the result; after a failure the function's own exception
       still propagates, with a note.

    Sync functions need a ``MandateClient``, coroutine functions an ``AsyncMandateClient``.
    """

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        name = getattr(fn, "__qualname__", repr(fn))
        spec = _Governance(
            workflow=workflow,
            action_type=action_type,
            case_type=case_type,
            resource=resource,
            confidence=confidence,
            params=params,
            context=context,
            idempotency_key=idempotency_key,
            wait_timeout=wait_timeout,
            details=details,
            signature=inspect.signature(fn),
            name=name,
        )
        if inspect.iscoroutinefunction(fn):
            if not isinstance(client, AsyncMandateClient):
                raise TypeError(f"@governed on coroutine function {name} needs AsyncMandateClient")
            wrapped = _governed_async(client, spec, cast(Callable[P, Awaitable[Any]], fn))
            return cast(Callable[P, R], wrapped)
        if not isinstance(client, MandateClient):
            raise TypeError(f"@governed on function {name} needs a MandateClient")
        return _governed_sync(client, spec, fn)

    return decorate


def _waited(client: MandateClient, action_id: str, spec: _Governance) -> ActionView:
    """The held action once decided; withdrawn when ``wait_timeout`` runs out first."""
    try:
        return client.wait(action_id, spec.wait_timeout)
    except WaitTimeout as timeout:
        try:
            timeout.action = client.withdraw(action_id, spec.gave_up())
        except Conflict:  # decided just now: that decision stands
            return client.get_action(action_id)
        except MandateError as lost:
            timeout.add_note(f"mandate: the held action was not withdrawn: {lost}")
        raise


async def _waited_async(
    client: AsyncMandateClient, action_id: str, spec: _Governance
) -> ActionView:
    """``_waited`` for the async client."""
    try:
        return await client.wait(action_id, spec.wait_timeout)
    except WaitTimeout as timeout:
        try:
            timeout.action = await client.withdraw(action_id, spec.gave_up())
        except Conflict:
            return await client.get_action(action_id)
        except MandateError as lost:
            timeout.add_note(f"mandate: the held action was not withdrawn: {lost}")
        raise


def _governed_sync(client: MandateClient, spec: _Governance, fn: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        verdict = client.propose(**spec.proposal(args, kwargs))
        action = None
        if verdict.verdict == "hold":
            action = _waited(client, verdict.action_id, spec)
        spec.go_ahead(verdict, action)
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            try:
                client.report_outcome(verdict.action_id, "failed", spec.failure(exc))
            except Conflict as refused:
                spec.not_waiting(verdict.action_id, refused)
            except MandateError as lost:
                exc.add_note(f"mandate: the failed outcome was not recorded: {lost}")
            raise
        try:
            client.report_outcome(verdict.action_id, "succeeded", spec.success(result))
        except Conflict as refused:
            spec.not_waiting(verdict.action_id, refused)
        except MandateError as lost:
            _outcome_lost(verdict.action_id, result, lost)
        return result

    return run


def _governed_async(
    client: AsyncMandateClient, spec: _Governance, fn: Callable[P, Awaitable[Any]]
) -> Callable[P, Awaitable[Any]]:
    @functools.wraps(fn)
    async def run(*args: P.args, **kwargs: P.kwargs) -> Any:
        verdict = await client.propose(**spec.proposal(args, kwargs))
        action = None
        if verdict.verdict == "hold":
            action = await _waited_async(client, verdict.action_id, spec)
        spec.go_ahead(verdict, action)
        try:
            result = await fn(*args, **kwargs)
        except Exception as exc:
            try:
                await client.report_outcome(verdict.action_id, "failed", spec.failure(exc))
            except Conflict as refused:
                spec.not_waiting(verdict.action_id, refused)
            except MandateError as lost:
                exc.add_note(f"mandate: the failed outcome was not recorded: {lost}")
            raise
        try:
            await client.report_outcome(verdict.action_id, "succeeded", spec.success(result))
        except Conflict as refused:
            spec.not_waiting(verdict.action_id, refused)
        except MandateError as lost:
            _outcome_lost(verdict.action_id, result, lost)
        return result

    return run


def _outcome_lost(action_id: str, result: Any, cause: MandateError) -> NoReturn:
    raise OutcomeNotRecorded(
        f"action {action_id} ran, but its outcome was not recorded: {cause}",
        action_id=action_id,
        result=result,
    ) from cause
