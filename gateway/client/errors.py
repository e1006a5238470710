"""The SDK's errors: one tree under ``MandateError``.

Those the gateway answered carry its RFC 9457 problem details (``.problem``) and HTTP status
(``.status``), and their ``str()`` is the problem's detail. Which status stands for which error
is the gateway's own table, ``gateway.errors.STATUS``: ``classify`` reads it backwards.
"""

from __future__ import annotations

from typing import Any, ClassVar

from gateway import errors as gateway_errors
from gateway.schemas import ActionView, Problem, ProblemField, Reason, Verdict

__all__ = [
    "ActionRejected",
    "Conflict",
    "Forbidden",
    "InvalidInput",
    "InvalidProposal",
    "MandateError",
    "NotFound",
    "OutcomeNotRecorded",
    "Unauthorized",
    "Unavailable",
    "Unreachable",
    "WaitTimeout",
    "classify",
]


class MandateError(Exception):
    """Base of every SDK error.

    ``problem`` is the gateway's RFC 9457 problem details and ``status`` the HTTP status when the
    gateway answered with an error; both are None for errors found on this side (a timeout, a
    rejected action, an unreachable gateway). ``str()`` is the problem's detail. ``kind`` is the
    gateway's error that the status stands for (``gateway.errors.STATUS``), where there is one.
    """

    kind: ClassVar[type[gateway_errors.GatewayError] | None] = None

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

    kind = gateway_errors.Unauthenticated


class Forbidden(MandateError):
    """403: the token's role may not do this (or it is bound to another workflow, or this is
    the caller's own proposal: separation of duties)."""

    kind = gateway_errors.Forbidden


class NotFound(MandateError):
    """404: no such action or approval (or the caller may not know of it)."""

    kind = gateway_errors.NotFound


class Conflict(MandateError):
    """409: the request contradicts what is recorded: an idempotency key reused for another
    proposal, an approval no longer pending, an action not waiting for an outcome."""

    kind = gateway_errors.Conflict


class InvalidInput(MandateError):
    """422: a field is wrong; ``errors`` names each one (``ProblemField(field, message)``)."""

    kind = gateway_errors.InvalidInput

    @property
    def errors(self) -> list[ProblemField]:
        """The fields that were wrong, and why."""
        return list(self.problem.errors or []) if self.problem else []


class InvalidProposal(InvalidInput):
    """422 on a proposal, e.g. ``params.amount`` given as a number instead of a decimal string."""


class Unavailable(MandateError):
    """503: a part the decision depends on failed and the gateway failed closed (nothing was
    executed), after the retries. Trying later is safe."""

    kind = gateway_errors.DecisionUnavailable


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


# Each gateway error's SDK error; which status means which comes from ``gateway.errors.STATUS``.
_BY_KIND: dict[type[gateway_errors.GatewayError], type[MandateError]] = {
    error.kind: error
    for error in (Unauthorized, Forbidden, NotFound, Conflict, InvalidInput, Unavailable)
    if error.kind is not None
}


def classify(status: int, *, proposing: bool = False) -> type[MandateError]:
    """The error an HTTP error status stands for (``MandateError`` for one the gateway's table
    does not name); a 422 on a proposal is an ``InvalidProposal``."""
    kind = gateway_errors.kind_of(status)
    error = MandateError if kind is None else _BY_KIND[kind]
    return InvalidProposal if error is InvalidInput and proposing else error


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
