"""``MandateClient``: the SDK's blocking client.

    from gateway.client import MandateClient

    with MandateClient("http://127.0.0.1:8080", token) as mandate:
        verdict = mandate.propose(workflow="parking", action_type="refund.issue",
                                  resource="booking/B-1", params={"amount": "20.00"},
                                  confidence=0.97)
        if verdict.verdict == "hold":
            action = mandate.wait(verdict.action_id, timeout=600)

The models are the server's own (``gateway.schemas``: ``Verdict``, ``ActionView``,
``ApprovalView``, ``Problem``...). Every error is a ``MandateError`` (``gateway.client.errors``).
What each method sends, and its retries, are written once (``gateway.client.calls`` and
``gateway.client.transport``); this module only carries the steps out, with blocking I/O.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeVar, cast

import httpx

from gateway.client.calls import ApprovalStatus, Calls, OutcomeStatus
from gateway.client.errors import MandateError
from gateway.client.transport import (
    DEFAULT_BACKOFF,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    Flow,
    Link,
    Pause,
    encode,
    error_from,
    unreachable,
)
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

__all__ = ["MandateClient"]

T = TypeVar("T")


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
        self._calls = Calls(Link(url, token, retries=retries, backoff=backoff))
        self._http = httpx.Client(
            base_url=self._calls.link.url,
            headers=self._calls.link.headers,
            timeout=timeout,
            transport=transport,
        )

    @property
    def url(self) -> str:
        """The gateway's base URL."""
        return self._calls.link.url

    def __enter__(self) -> MandateClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def _run(self, flow: Flow[T]) -> T:
        """Carry out ``flow``: send its requests, sleep through its pauses, return its answer."""
        answer: httpx.Response | None = None
        failure: httpx.TransportError | None = None
        while True:
            try:
                step = flow.send(answer) if failure is None else flow.throw(failure)
            except StopIteration as done:
                result: T = done.value
                return result
            answer, failure = None, None
            if isinstance(step, Pause):
                time.sleep(step.seconds)
                continue
            try:
                answer = self._http.request(
                    step.method,
                    step.path,
                    content=step.content,
                    params=step.params,
                    headers=step.headers,
                )
            except httpx.TransportError as exc:
                failure = exc

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
        return self._run(
            self._calls.propose(
                workflow=workflow,
                action_type=action_type,
                resource=resource,
                params=params,
                case_type=case_type,
                confidence=confidence,
                context=context,
                idempotency_key=idempotency_key,
            )
        )

    def get_action(self, action_id: str) -> ActionView:
        """An action's status (``approved``, ``held``, ``rejected``, ``expired``,
        ``succeeded``, ``failed``), its verdict and its ledger timeline."""
        return self._run(self._calls.get_action(action_id))

    def wait(self, action_id: str, timeout: float) -> ActionView:
        """Poll, with growing pauses, until the action is no longer ``held``, and return it.

        The final state is ``approved`` (go ahead; a callback action then waits for
        ``report_outcome``), ``rejected`` or ``expired`` (never runs), or, when the gateway
        carried it out itself through a webhook, ``succeeded`` or ``failed``. Raises
        ``WaitTimeout`` (a ``TimeoutError``) when ``timeout`` seconds pass first.
        """
        return self._run(self._calls.wait(action_id, timeout))

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
        return self._run(self._calls.report_outcome(action_id, outcome, details))

    def withdraw(self, action_id: str, reason: str) -> ActionView:
        """Take back a held action of yours that nobody will carry out (you stopped waiting for
        it): its approval closes as ``withdrawn`` and it never executes. ``Conflict`` once it is
        decided (look with ``get_action``: an approval that came just now stands)."""
        return self._run(self._calls.withdraw(action_id, reason))

    def workflow(self, workflow: str) -> WorkflowView:
        """What ``workflow`` takes: its action types, the case types each may be, and which of
        them this token's role may propose."""
        return self._run(self._calls.workflow(workflow))

    def approvals(self, status: ApprovalStatus = "pending") -> list[ApprovalView]:
        """Approvals this token may decide or oversee, newest first."""
        return self._run(self._calls.approvals(status))

    def get_approval(self, approval_id: str) -> ApprovalView:
        """One approval with its votes."""
        return self._run(self._calls.get_approval(approval_id))

    def decide(
        self, approval_id: str, decision: Literal["approve", "reject"], reason: str = ""
    ) -> ApprovalView:
        """Approve or reject a held action (rejecting needs a reason). Returns the approval as it
        stands after the vote; ``Conflict`` when it is no longer pending.

        Voting the same way twice counts once while the approval is pending. If a connection
        broke after the vote was sent and that very vote closed the approval, the retry is
        answered ``Conflict``: look with ``get_approval`` to see whose vote closed it.
        """
        return self._run(self._calls.decide(approval_id, decision, reason))

    # -- earned autonomy and audits ---------------------------------------------------------

    def autonomy(self, workflow: str | None = None) -> list[AutonomyView]:
        """Every case type's level, figures, next level's criteria and pending promotion."""
        return self._run(self._calls.autonomy(workflow))

    def autonomy_of(self, workflow: str, case_type: str) -> AutonomyDetail:
        """One case type, with its changes of level and its figures day by day."""
        return self._run(self._calls.autonomy_of(workflow, case_type))

    def set_level(self, workflow: str, case_type: str, level: int, reason: str) -> AutonomyDetail:
        """Set a case type's level by hand (a governor's token), with a reason for the ledger.
        ``Conflict`` when it is at that level already."""
        return self._run(self._calls.set_level(workflow, case_type, level, reason))

    def promotions(self, status: str = "pending") -> list[PromotionView]:
        """Promotions the gateway proposed, newest first."""
        return self._run(self._calls.promotions(status))

    def decide_promotion(
        self, promotion_id: str, decision: Literal["approve", "reject"], reason: str = ""
    ) -> PromotionView:
        """A governor approves or rejects a proposed promotion (rejecting needs a reason)."""
        return self._run(self._calls.decide_promotion(promotion_id, decision, reason))

    def audits(self, status: str = "pending") -> list[AuditView]:
        """Executed actions drawn for audit that this token may audit, oldest first."""
        return self._run(self._calls.audits(status))

    def record_finding(
        self, audit_id: str, finding: Literal["correct", "incorrect"], note: str = ""
    ) -> AuditView:
        """An auditor's finding on an executed action (an incorrect one needs a note)."""
        return self._run(self._calls.record_finding(audit_id, finding, note))

    # -- exceptions (an approver or governor token) -------------------------------------------

    def exceptions(self, status: str = "open") -> list[ExceptionView]:
        """Failed executions handed to people that this token may see, newest first."""
        return self._run(self._calls.exceptions(status))

    def decide_exception(
        self, exception_id: str, decision: Literal["retry", "handled"], note: str = ""
    ) -> ExceptionView:
        """Retry a failed webhook action, or mark the exception handled (a note needed)."""
        return self._run(self._calls.decide_exception(exception_id, decision, note))

    # -- the policy lifecycle (a policy-admin token) -----------------------------------------

    def activate_policy(
        self,
        files: Mapping[str, str],
        reason: str,
        mode: Literal["active", "shadow"] = "active",
        *,
        signatures: str | None = None,
    ) -> ActivationView:
        """Make a bundle the active one, or run it in shadow, with a reason for the ledger.

        ``files`` maps each path in the bundle to its text; ``signatures`` is its
        ``.signatures.json`` (``mandate policy sign``), which a gateway with a bundle key
        requires. The gateway checks the bundle first (its signature, its Rego tests and
        decision cases): ``InvalidInput`` naming the file when it fails them. ``changed`` is
        False when the slot held this bundle already.
        """
        return self._run(self._calls.activate_policy(files, reason, mode, signatures))

    def active_policy(self, *, content: bool = False) -> PolicyView:
        """The active bundle: digest, who activated it, when, why, who signed it, its files
        (with their text when ``content``)."""
        return self._run(self._calls.active_policy(content))

    def shadow_policy(
        self,
        *,
        limit: int = 100,
        before: int | None = None,
        verdict_changes_only: bool = False,
        reasons_only: bool = False,
    ) -> ShadowView:
        """The shadow bundle (None when none runs) and its disagreements with the active one,
        newest first, each with the reason codes the shadow adds and drops; only those with
        another verdict (``verdict_changes_only``) or only those with the same verdict for
        other reasons (``reasons_only``). Pass ``next_before`` as ``before`` for the next
        page."""
        return self._run(
            self._calls.shadow_policy(limit, before, verdict_changes_only, reasons_only)
        )

    def stop_shadow(self, reason: str = "") -> ShadowView:
        """Stop the shadow bundle (a ``policy`` ledger entry); ``Conflict`` when none runs.
        Its disagreements stay listed."""
        return self._run(self._calls.stop_shadow(reason))

    def replay_policy(
        self,
        files: Mapping[str, str] | None = None,
        *,
        since: str | None = None,
        examples: int = 3,
        progress: Callable[[int, int | None], None] | None = None,
    ) -> dict[str, Any]:
        """Re-decide the recorded history with a candidate bundle and return the report
        (``POST /v1/policies/replay``'s last event); nothing is written.

        ``files`` as for ``activate_policy``; without them, each decision is replayed with the
        bundle that made it. ``since`` is a date or an ISO time. The gateway streams its
        progress, passed on to ``progress(scanned, total)``, for as long as the replay takes:
        no timeout applies, and nothing is retried. ``MandateError`` when the replay fails
        after it began; ``Unreachable`` (with the ``httpx`` error as ``__cause__``) when the
        connection fails or breaks.
        """
        body = {
            "files": None if files is None else dict(files),
            "since": since,
            "examples": examples,
        }
        headers = {"Content-Type": "application/json"}
        try:
            with self._http.stream(
                "POST", "/v1/policies/replay", content=encode(body), headers=headers, timeout=None
            ) as response:
                if not response.is_success:
                    response.read()
                    raise error_from(response)
                for line in response.iter_lines():
                    if not line.strip():
                        continue
                    try:
                        event = json.loads(line)
                        kind = event["event"]
                    except (ValueError, KeyError, TypeError) as exc:
                        raise MandateError(f"not a replay event: {line[:200]!r}") from exc
                    if kind == "report":
                        return cast(dict[str, Any], event)
                    if kind != "progress":
                        raise MandateError(f"the replay failed: {event.get('detail')}")
                    if progress is not None:
                        progress(event["scanned"], event["total"])
        except httpx.TransportError as exc:
            raise unreachable(self.url, exc) from exc
        raise MandateError("the gateway ended the replay without a report")
