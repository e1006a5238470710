"""``@governed``: route every call of a function through the gateway first.

The function runs only on ``execute`` or after its approval, once, and its outcome is reported
(the callback adapter). Sync functions go through a ``MandateClient``, coroutine functions
through an ``AsyncMandateClient``.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import functools
import inspect
import logging
import math
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar, cast

from gateway.client.aio import AsyncMandateClient
from gateway.client.errors import (
    ActionRejected,
    Conflict,
    MandateError,
    OutcomeNotRecorded,
    WaitTimeout,
)
from gateway.client.sync import MandateClient
from gateway.client.transport import json_default
from gateway.schemas import ActionView, Verdict

__all__ = ["governed"]

log = logging.getLogger("mandate.client")

_FINAL = frozenset({"rejected", "expired", "withdrawn"})

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
        return json_default(value)
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

    def handle_lost_failure(self, action_id: str, exc: Exception, error: MandateError) -> None:
        """The function raised ``exc`` and reporting that failed with ``error``: a refusal
        (409) is logged, anything else noted on ``exc``, which propagates either way."""
        if isinstance(error, Conflict):
            self._not_waiting(action_id, error)
        else:
            exc.add_note(f"mandate: the failed outcome was not recorded: {error}")

    def handle_lost_success(self, action_id: str, result: Any, error: MandateError) -> None:
        """The function returned ``result`` and reporting that failed with ``error``: a refusal
        (409) is logged, anything else raises ``OutcomeNotRecorded``."""
        if isinstance(error, Conflict):
            self._not_waiting(action_id, error)
            return
        raise OutcomeNotRecorded(
            f"action {action_id} ran, but its outcome was not recorded: {error}",
            action_id=action_id,
            result=result,
        ) from error

    def _not_waiting(self, action_id: str, exc: Conflict) -> None:
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
            except MandateError as error:
                spec.handle_lost_failure(verdict.action_id, exc, error)
            raise
        try:
            client.report_outcome(verdict.action_id, "succeeded", spec.success(result))
        except MandateError as error:
            spec.handle_lost_success(verdict.action_id, result, error)
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
            except MandateError as error:
                spec.handle_lost_failure(verdict.action_id, exc, error)
            raise
        try:
            await client.report_outcome(verdict.action_id, "succeeded", spec.success(result))
        except MandateError as error:
            spec.handle_lost_success(verdict.action_id, result, error)
        return result

    return run
