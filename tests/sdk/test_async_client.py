"""AsyncMandateClient against the real gateway on loopback: the same methods, awaited, and
wait() while an approver decides from another task."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Literal

import pytest

from gateway.client import (
    AsyncMandateClient,
    Conflict,
    Forbidden,
    InvalidInput,
    InvalidProposal,
    NotFound,
    Unauthorized,
    Unreachable,
    WaitTimeout,
)
from gateway.schemas import ActionView, ApprovalView, Verdict
from tests.sdk.conftest import Live, closed_port, executes, held, rejected


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(test())


def client(live: Live, role: str) -> AsyncMandateClient:
    return AsyncMandateClient(live.url, live.token(role), backoff=0.01)


async def decide_when_held(
    live: Live, resource: str, decision: Literal["approve", "reject"], reason: str = ""
) -> ApprovalView:
    """An approver, in another task: wait for the approval to appear, then decide it."""
    async with client(live, "approver") as approver:
        for _ in range(400):
            pending = [a for a in await approver.approvals() if a.resource == resource]
            if pending:
                return await approver.decide(pending[0].id, decision, reason)
            await asyncio.sleep(0.05)
    raise AssertionError(f"no approval for {resource} appeared")


def test_propose_get_action_and_report_outcome(live: Live) -> None:
    async def test() -> None:
        async with client(live, "booking-agent") as bot:
            verdict = await bot.propose(**executes())
            assert isinstance(verdict, Verdict)
            assert verdict.verdict == "execute"
            action = await bot.get_action(verdict.action_id)
            assert isinstance(action, ActionView)
            assert action.status == "approved"
            done = await bot.report_outcome(verdict.action_id, "succeeded", {"ok": True})
            assert done.status == "succeeded"
            assert [e["kind"] for e in done.timeline].count("outcome") == 1
            with pytest.raises(Conflict):
                await bot.report_outcome(verdict.action_id, False)
        assert bot._http.is_closed

    run(test)


def test_errors(live: Live) -> None:
    async def test() -> None:
        async with client(live, "payments-agent") as bot:
            with pytest.raises(InvalidProposal) as invalid:
                await bot.propose(**rejected(params={"amount": 1.5}))
            assert invalid.value.errors[0].field == "params.amount"
            with pytest.raises(NotFound):
                await bot.get_action("act_000000000000000000000000")
            with pytest.raises(NotFound):
                await bot.get_approval("apr_000000000000000000000000")
        async with client(live, "approver") as approver:
            with pytest.raises(Forbidden):  # an approver's role proposes nothing
                await approver.propose(**executes())
        body = executes()
        async with client(live, "booking-agent") as bot:
            await bot.propose(**body)
            with pytest.raises(Conflict):
                await bot.propose(**(body | {"resource": "elsewhere"}))
        async with AsyncMandateClient(live.url, "mdt_wrong") as stranger:
            with pytest.raises(Unauthorized) as unauthorized:
                await stranger.get_action("act_000000000000000000000000")
            assert unauthorized.value.status == 401
        url = f"http://127.0.0.1:{closed_port()}"
        async with AsyncMandateClient(url, "mdt_x", retries=1, backoff=0.01) as nowhere:
            with pytest.raises(Unreachable):
                await nowhere.approvals()

    run(test)


def test_approvals_and_decide(live: Live) -> None:
    async def test() -> None:
        async with client(live, "booking-agent") as bot, client(live, "approver") as approver:
            verdict = await bot.propose(**held(resource="lot-a/1"))
            assert verdict.approval is not None
            listed = [a.id for a in await approver.approvals()]
            assert verdict.approval.id in listed
            assert (await approver.get_approval(verdict.approval.id)).status == "pending"
            with pytest.raises(InvalidInput):
                await approver.decide(verdict.approval.id, "reject", "   ")
            decided = await approver.decide(verdict.approval.id, "reject", "not today")
            assert decided.status == "rejected"
            assert verdict.approval.id in [a.id for a in await approver.approvals("rejected")]

    run(test)


def test_wait_while_another_task_approves(live: Live) -> None:
    async def test() -> None:
        async with client(live, "booking-agent") as bot:
            verdict = await bot.propose(**held(resource="lot-b/2"))
            action, vote = await asyncio.gather(
                bot.wait(verdict.action_id, timeout=20),
                decide_when_held(live, "lot-b/2", "approve"),
            )
            assert vote.status == "approved"
            assert action.status == "approved"

    run(test)


def test_wait_while_another_task_rejects(live: Live) -> None:
    async def test() -> None:
        async with client(live, "booking-agent") as bot:
            verdict = await bot.propose(**held(resource="lot-c/3"))
            action, _ = await asyncio.gather(
                bot.wait(verdict.action_id, timeout=20),
                decide_when_held(live, "lot-c/3", "reject", "duplicate"),
            )
            assert action.status == "rejected"

    run(test)


def test_wait_times_out(live: Live) -> None:
    async def test() -> None:
        async with client(live, "booking-agent") as bot:
            verdict = await bot.propose(**held())
            with pytest.raises(WaitTimeout) as error:
                await bot.wait(verdict.action_id, timeout=0.3)
            assert isinstance(error.value, TimeoutError)
            assert error.value.action.status == "held"

    run(test)
