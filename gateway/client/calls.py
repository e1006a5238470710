"""Every call of the gateway's HTTP API, described once for both clients.

Each method of ``Calls`` checks its arguments, says what to send (method, path, body) and which
model reads the answer, and returns the ``Flow`` (``gateway.client.transport``) that
``MandateClient`` runs with blocking I/O and ``AsyncMandateClient`` awaits. The models are the
server's own (``gateway.schemas``), so client and server cannot drift apart.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import uuid
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import TypeAdapter

from gateway.client.errors import Conflict, WaitTimeout
from gateway.client.transport import Call, Flow, Link, Pause, encode
from gateway.schemas import (
    ActionView,
    ActivationView,
    ApprovalView,
    AuditView,
    AutonomyDetail,
    AutonomyView,
    ExceptionView,
    PolicyView,
    PromotionView,
    ShadowView,
    Verdict,
    WorkflowView,
)

__all__ = ["ApprovalStatus", "Calls", "OutcomeStatus"]

OutcomeStatus = Literal["succeeded", "failed"]
ApprovalStatus = Literal["pending", "approved", "rejected", "expired", "superseded", "withdrawn"]

_POLL_FIRST = 0.1  # wait(): the first pause between polls, growing by half each time...
_POLL_MAX = 2.0  # ...up to this

_APPROVALS = TypeAdapter(list[ApprovalView])
_AUTONOMY = TypeAdapter(list[AutonomyView])
_PROMOTIONS = TypeAdapter(list[PromotionView])
_AUDITS = TypeAdapter(list[AuditView])
_EXCEPTIONS = TypeAdapter(list[ExceptionView])


def _segment(value: str) -> str:
    """An id as one path segment: nothing in it can reach another endpoint."""
    if not value or "/" in value or value in (".", ".."):
        raise ValueError(f"not an id: {value!r}")
    return urllib.parse.quote(value, safe="")


def _recorded(view: ActionView, call: Call[ActionView]) -> bool:
    """Whether the outcome ``call`` reports is the one the action already has: then an earlier
    attempt whose answer was lost did record it."""
    last = next((e for e in reversed(view.timeline) if e.get("kind") == "outcome"), None)
    if last is None:
        return False
    body = last.get("body") or {}
    wanted = json.loads(encode(call.body))
    return bool(
        body.get("attempt") is None
        and body.get("status") == wanted["status"]
        and body.get("detail") == wanted["details"]
    )


class Calls:
    """The API's calls on one gateway (``link``); ``MandateClient`` documents each."""

    def __init__(self, link: Link) -> None:
        self.link = link

    def propose(
        self,
        *,
        workflow: str,
        action_type: str,
        resource: str,
        params: Mapping[str, Any] | None,
        case_type: str | None,
        confidence: float | None,
        context: Mapping[str, Any] | None,
        idempotency_key: str | None,
    ) -> Flow[Verdict]:
        """``POST /v1/actions``."""
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
        call = Call("POST", "/v1/actions", Verdict.model_validate_json, body, proposing=True)
        return self.link.exchange(call)

    def get_action(self, action_id: str) -> Flow[ActionView]:
        """``GET /v1/actions/{id}``."""
        path = f"/v1/actions/{_segment(action_id)}"
        return self.link.exchange(Call("GET", path, ActionView.model_validate_json))

    def wait(self, action_id: str, timeout: float) -> Flow[ActionView]:
        """``get_action`` with growing pauses until the action is no longer held."""
        deadline = time.monotonic() + timeout
        pause = _POLL_FIRST
        while True:
            view = yield from self.get_action(action_id)
            left = deadline - time.monotonic()
            if view.status != "held":
                return view
            if left <= 0:
                raise WaitTimeout(
                    f"action {action_id} is still held after {timeout:g}s", action=view
                )
            yield Pause(min(pause, left))
            pause = min(_POLL_MAX, pause * 1.5)

    def report_outcome(
        self,
        action_id: str,
        outcome: bool | OutcomeStatus,
        details: Mapping[str, Any] | None,
    ) -> Flow[ActionView]:
        """``POST /v1/actions/{id}/outcome``; a 409 after a broken connection is looked into."""
        if isinstance(outcome, bool):
            status = "succeeded" if outcome else "failed"
        elif outcome in ("succeeded", "failed"):
            status = outcome
        else:
            raise ValueError(f"outcome must be a bool, 'succeeded' or 'failed', not {outcome!r}")
        body = {"status": status, "details": dict(details or {})}
        path = f"/v1/actions/{_segment(action_id)}/outcome"
        return self._report(action_id, Call("POST", path, ActionView.model_validate_json, body))

    def _report(self, action_id: str, call: Call[ActionView]) -> Flow[ActionView]:
        attempts = self.link.attempts()
        try:
            return (yield from self.link.exchange(call, attempts))
        except Conflict:
            if attempts.broke:  # the first attempt may have landed: is this its outcome?
                view = yield from self.get_action(action_id)
                if _recorded(view, call):
                    return view
            raise

    def withdraw(self, action_id: str, reason: str) -> Flow[ActionView]:
        """``POST /v1/actions/{id}/withdraw``."""
        path = f"/v1/actions/{_segment(action_id)}/withdraw"
        return self.link.exchange(
            Call("POST", path, ActionView.model_validate_json, {"reason": reason})
        )

    def workflow(self, workflow: str) -> Flow[WorkflowView]:
        """``GET /v1/workflows/{workflow}``."""
        path = f"/v1/workflows/{_segment(workflow)}"
        return self.link.exchange(Call("GET", path, WorkflowView.model_validate_json))

    def approvals(self, status: ApprovalStatus) -> Flow[list[ApprovalView]]:
        """``GET /v1/approvals``."""
        call = Call("GET", "/v1/approvals", _APPROVALS.validate_json, params={"status": status})
        return self.link.exchange(call)

    def get_approval(self, approval_id: str) -> Flow[ApprovalView]:
        """``GET /v1/approvals/{id}``."""
        path = f"/v1/approvals/{_segment(approval_id)}"
        return self.link.exchange(Call("GET", path, ApprovalView.model_validate_json))

    def decide(
        self, approval_id: str, decision: Literal["approve", "reject"], reason: str
    ) -> Flow[ApprovalView]:
        """``POST /v1/approvals/{id}/decisions``."""
        if decision not in ("approve", "reject"):
            raise ValueError(f"decision must be 'approve' or 'reject', not {decision!r}")
        path = f"/v1/approvals/{_segment(approval_id)}/decisions"
        body = {"decision": decision, "reason": reason}
        return self.link.exchange(Call("POST", path, ApprovalView.model_validate_json, body))

    # -- earned autonomy and audits ---------------------------------------------------------

    def autonomy(self, workflow: str | None) -> Flow[list[AutonomyView]]:
        """``GET /v1/autonomy``."""
        params = None if workflow is None else {"workflow": workflow}
        return self.link.exchange(
            Call("GET", "/v1/autonomy", _AUTONOMY.validate_json, params=params)
        )

    def autonomy_of(self, workflow: str, case_type: str) -> Flow[AutonomyDetail]:
        """``GET /v1/autonomy/{workflow}/{case type}``."""
        path = f"/v1/autonomy/{_segment(workflow)}/{_segment(case_type)}"
        return self.link.exchange(Call("GET", path, AutonomyDetail.model_validate_json))

    def set_level(
        self, workflow: str, case_type: str, level: int, reason: str
    ) -> Flow[AutonomyDetail]:
        """``POST /v1/autonomy/{workflow}/{case type}``."""
        path = f"/v1/autonomy/{_segment(workflow)}/{_segment(case_type)}"
        body = {"level": level, "reason": reason}
        return self.link.exchange(Call("POST", path, AutonomyDetail.model_validate_json, body))

    def promotions(self, status: str) -> Flow[list[PromotionView]]:
        """``GET /v1/autonomy/promotions``."""
        path = "/v1/autonomy/promotions"
        call = Call("GET", path, _PROMOTIONS.validate_json, params={"status": status})
        return self.link.exchange(call)

    def decide_promotion(
        self, promotion_id: str, decision: Literal["approve", "reject"], reason: str
    ) -> Flow[PromotionView]:
        """``POST /v1/autonomy/promotions/{id}/decisions``."""
        path = f"/v1/autonomy/promotions/{_segment(promotion_id)}/decisions"
        body = {"decision": decision, "reason": reason}
        return self.link.exchange(Call("POST", path, PromotionView.model_validate_json, body))

    def audits(self, status: str) -> Flow[list[AuditView]]:
        """``GET /v1/audits``."""
        call = Call("GET", "/v1/audits", _AUDITS.validate_json, params={"status": status})
        return self.link.exchange(call)

    def record_finding(
        self, audit_id: str, finding: Literal["correct", "incorrect"], note: str
    ) -> Flow[AuditView]:
        """``POST /v1/audits/{id}``."""
        body = {"finding": finding, "note": note}
        path = f"/v1/audits/{_segment(audit_id)}"
        return self.link.exchange(Call("POST", path, AuditView.model_validate_json, body))

    def exceptions(self, status: str) -> Flow[list[ExceptionView]]:
        """``GET /v1/exceptions``."""
        call = Call("GET", "/v1/exceptions", _EXCEPTIONS.validate_json, params={"status": status})
        return self.link.exchange(call)

    def decide_exception(
        self, exception_id: str, decision: Literal["retry", "handled"], note: str
    ) -> Flow[ExceptionView]:
        """``POST /v1/exceptions/{id}/decisions``."""
        body = {"decision": decision, "note": note}
        path = f"/v1/exceptions/{_segment(exception_id)}/decisions"
        return self.link.exchange(Call("POST", path, ExceptionView.model_validate_json, body))

    # -- the policy lifecycle (a policy-admin token) -----------------------------------------

    def activate_policy(
        self,
        files: Mapping[str, str],
        reason: str,
        mode: Literal["active", "shadow"],
        signatures: str | None,
    ) -> Flow[ActivationView]:
        """``POST /v1/policies``."""
        body: dict[str, Any] = {"files": dict(files), "reason": reason, "mode": mode}
        if signatures is not None:
            body["signatures"] = signatures
        return self.link.exchange(
            Call("POST", "/v1/policies", ActivationView.model_validate_json, body)
        )

    def active_policy(self, content: bool) -> Flow[PolicyView]:
        """``GET /v1/policies/active``."""
        params = {"content": "true"} if content else None
        return self.link.exchange(
            Call("GET", "/v1/policies/active", PolicyView.model_validate_json, params=params)
        )

    def shadow_policy(
        self, limit: int, before: int | None, verdict_changes_only: bool, reasons_only: bool
    ) -> Flow[ShadowView]:
        """``GET /v1/policies/shadow``."""
        params: dict[str, Any] = {"limit": limit}
        if before is not None:
            params["before"] = before
        if verdict_changes_only:
            params["verdict_changes_only"] = "true"
        if reasons_only:
            params["reasons_only"] = "true"
        return self.link.exchange(
            Call("GET", "/v1/policies/shadow", ShadowView.model_validate_json, params=params)
        )

    def stop_shadow(self, reason: str) -> Flow[ShadowView]:
        """``DELETE /v1/policies/shadow``."""
        params = {"reason": reason} if reason else None
        return self.link.exchange(
            Call("DELETE", "/v1/policies/shadow", ShadowView.model_validate_json, params=params)
        )
