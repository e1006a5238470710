"""@governed against the real gateway: the function runs only on execute or approval, once,
and its outcome lands in the ledger."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest

from gateway.client import (
    ActionRejected,
    AsyncMandateClient,
    Conflict,
    MandateClient,
    MandateError,
    WaitTimeout,
    governed,
)
from gateway.schemas import ActionView
from tests.sdk.conftest import Later, Live, approve_when_held, key


class Connection:
    """Stands for what a real function takes besides its data: it has no JSON form."""


def outcome_of(action: ActionView) -> dict[str, Any]:
    [entry] = [e for e in action.timeline if e["kind"] == "outcome"]
    body = entry["body"]
    assert isinstance(body, dict)
    return body


def test_execute_runs_the_function_once_and_records_success(live: Live) -> None:
    the_key = key()
    calls: list[tuple[str, str, Decimal]] = []
    with live.client("booking-agent") as bot:

        @governed(
            bot,
            workflow="parking",
            action_type="booking.create",
            resource=lambda customer, space, price, conn: f"lot-7/{space}",
            confidence=0.95,
            idempotency_key=lambda *args, **kwargs: the_key,
            details=lambda booking: {"booking": booking},
        )
        def book(customer: str, space: str, price: Decimal, conn: Connection) -> str:
            """Book a space."""
            calls.append((customer, space, price))
            return "B-1"

        assert book("C-1", "space-4", Decimal("12.50"), Connection()) == "B-1"
        action = bot.get_action(live.action_id(the_key))

    assert calls == [("C-1", "space-4", Decimal("12.50"))]
    assert book.__name__ == "book"
    assert book.__doc__ == "Book a space."
    assert action.status == "succeeded"
    proposal = action.timeline[0]["body"]["proposal"]
    # The bound arguments with a JSON form; money as a string; the connection left out.
    assert proposal["params"] == {"customer": "C-1", "space": "space-4", "price": "12.50"}
    assert proposal["resource"] == "lot-7/space-4"
    assert outcome_of(action) == outcome_of(action) | {
        "status": "succeeded",
        "detail": {"booking": "B-1"},
    }


def test_an_exception_is_reported_as_failed_and_propagates(live: Live) -> None:
    the_key = key()
    calls = 0
    with live.client("booking-agent") as bot:

        @governed(
            bot,
            workflow="parking",
            action_type="booking.create",
            resource="lot-7/space-5",
            confidence=0.95,
            params=lambda space: {"space": space, "note": "explicit params"},
            idempotency_key=lambda space: the_key,
        )
        def book(space: str) -> None:
            nonlocal calls
            calls += 1
            raise ValueError(f"{space} is closed")

        with pytest.raises(ValueError, match="space-5 is closed"):
            book("space-5")
        action = bot.get_action(live.action_id(the_key))

    assert calls == 1
    assert action.status == "failed"
    assert action.timeline[0]["body"]["proposal"]["params"] == {
        "space": "space-5",
        "note": "explicit params",
    }
    assert outcome_of(action)["detail"] == {"error": "ValueError", "message": "space-5 is closed"}


def test_reject_does_not_call_the_function(live: Live) -> None:
    called = False
    with live.client("booking-agent") as bot:

        @governed(bot, workflow="parking", action_type="refund.issue", resource="booking/B-1")
        def refund(amount: Decimal) -> None:
            nonlocal called
            called = True

        with pytest.raises(ActionRejected) as error:
            refund(Decimal("20.00"))

    assert not called
    assert isinstance(error.value, MandateError)
    assert error.value.verdict.verdict == "reject"
    assert [r.code for r in error.value.reasons] == ["not_permitted"]
    assert "not_permitted" in str(error.value)


def test_hold_then_approve_runs_the_function(live: Live) -> None:
    the_key = key()
    calls = 0
    with live.client("booking-agent") as bot:

        @governed(
            bot,
            workflow="parking",
            action_type="booking.create",
            resource="lot-9/space-1",
            confidence=0.5,
            idempotency_key=lambda: the_key,
        )
        def book() -> str:
            nonlocal calls
            calls += 1
            return "B-9"

        approver = Later(0.2, approve_when_held(live, "lot-9/space-1"))
        assert book() == "B-9"
        approver.join()
        action = bot.get_action(live.action_id(the_key))

    assert calls == 1
    assert action.status == "succeeded"
    kinds = [e["kind"] for e in action.timeline]
    assert kinds.index("approval") < kinds.index("outcome")


def test_hold_then_reject_does_not_call_the_function(live: Live) -> None:
    called = False
    with live.client("booking-agent") as bot:

        @governed(
            bot,
            workflow="parking",
            action_type="booking.create",
            resource="lot-9/space-2",
            confidence=0.5,
        )
        def book() -> None:
            nonlocal called
            called = True

        approver = Later(
            0.2, approve_when_held(live, "lot-9/space-2", decision="reject", reason="lot closed")
        )
        with pytest.raises(ActionRejected) as error:
            book()
        approver.join()

    assert not called
    assert error.value.verdict.verdict == "hold"
    assert error.value.action is not None
    assert error.value.action.status == "rejected"
    assert "lot closed" in str(error.value)
    assert [r.code for r in error.value.reasons] == ["low_confidence"]


def test_hold_then_expiry_does_not_call_the_function(expiring: Live) -> None:
    called = False
    with expiring.client("booking-agent") as bot:

        @governed(
            bot,
            workflow="parking",
            action_type="booking.create",
            resource="lot-9/space-3",
            confidence=0.5,
            wait_timeout=20,
        )
        def book() -> None:
            nonlocal called
            called = True

        with pytest.raises(ActionRejected, match="expired"):
            book()
    assert not called


def test_a_hold_nobody_decides_in_time_raises_wait_timeout(live: Live) -> None:
    called = False
    with live.client("booking-agent") as bot:

        @governed(
            bot,
            workflow="parking",
            action_type="booking.create",
            resource="lot-9/space-4",
            confidence=0.5,
            wait_timeout=0.3,
        )
        def book() -> None:
            nonlocal called
            called = True

        with pytest.raises(WaitTimeout) as error:
            book()
    assert not called
    # Nobody would run it now: it is withdrawn, not left for an approver to approve.
    action = error.value.action
    assert action.status == "withdrawn"
    (withdrawal,) = [e for e in action.timeline if e["kind"] == "withdrawal"]
    assert "no decision within 0.3 s" in withdrawal["body"]["reason"]
    approval_id = action.decision.approval.id if action.decision.approval else ""
    with live.client("approver") as approver:
        assert approval_id not in {a.id for a in approver.approvals()}
        with pytest.raises(Conflict, match="withdrawn"):
            approver.decide(approval_id, "approve")


def test_an_async_hold_nobody_decides_in_time_is_withdrawn(live: Live) -> None:
    async def test() -> ActionView:
        async with AsyncMandateClient(live.url, live.token("booking-agent")) as bot:

            @governed(
                bot,
                workflow="parking",
                action_type="booking.create",
                resource="lot-9/space-5",
                confidence=0.5,
                wait_timeout=0.3,
            )
            async def book() -> None:
                raise AssertionError("a held call that timed out must not run")

            with pytest.raises(WaitTimeout) as error:
                await book()
            return error.value.action

    assert asyncio.run(test()).status == "withdrawn"


def test_the_client_must_match_the_function(live: Live) -> None:
    sync = MandateClient(live.url, "mdt_x")
    asynchronous = AsyncMandateClient(live.url, "mdt_x")

    async def coroutine() -> None: ...

    def function() -> None: ...

    with pytest.raises(TypeError, match="AsyncMandateClient"):
        governed(sync, workflow="parking", action_type="booking.create", resource="r")(coroutine)
    with pytest.raises(TypeError, match="MandateClient"):
        governed(asynchronous, workflow="parking", action_type="booking.create", resource="r")(
            function
        )
    sync.close()
    asyncio.run(asynchronous.aclose())


# -- coroutine functions -------------------------------------------------------------------------


def test_async_execute_raise_reject_and_approve(live: Live) -> None:
    keys = {space: key() for space in ("free", "broken", "held")}
    calls: list[str] = []

    async def test() -> None:
        async with AsyncMandateClient(live.url, live.token("booking-agent")) as bot:

            @governed(
                bot,
                workflow="parking",
                action_type="booking.create",
                resource=lambda space, fail=False: f"lot-8/{space}",
                confidence=lambda space, fail=False: 0.5 if space == "held" else 0.95,
                idempotency_key=lambda space, fail=False: keys[space],
            )
            async def book(space: str, fail: bool = False) -> str:
                await asyncio.sleep(0)
                calls.append(space)
                if fail:
                    raise RuntimeError("no such space")
                return f"booked {space}"

            @governed(bot, workflow="parking", action_type="refund.issue", resource="b/1")
            async def refund() -> None:
                calls.append("refund")

            assert await book("free") == "booked free"
            with pytest.raises(RuntimeError, match="no such space"):
                await book("broken", fail=True)
            with pytest.raises(ActionRejected):
                await refund()

            approver = asyncio.create_task(asyncio.to_thread(approve_when_held(live, "lot-8/held")))
            assert await book("held") == "booked held"
            await approver

            for space in ("free", "held"):
                done = await bot.get_action(live.action_id(keys[space]))
                assert done.status == "succeeded"
            failure = await bot.get_action(live.action_id(keys["broken"]))
            assert failure.status == "failed"
            assert outcome_of(failure)["detail"]["error"] == "RuntimeError"

    asyncio.run(test())
    assert calls == ["free", "broken", "held"]


def test_an_action_a_webhook_carries_out_is_not_run_here_too(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    from adapters.examples.receiver import Receiver, running_receiver
    from gateway.server.serving import serve_in_background
    from gateway.settings import Settings
    from tests.sdk.conftest import POLICIES

    receiver = Receiver(b"hook-secret")
    calls: list[str] = []
    with running_receiver(receiver) as hook:
        settings = Settings(
            data_dir=tmp_path_factory.mktemp("webhooked"),
            policies=POLICIES,
            webhooks={"parking": hook},
            webhook_secret="hook-secret",
        )
        with serve_in_background(settings) as served:
            token, _ = served.runtime.tokens.create(name="hooked-bot", role="booking-agent")
            with MandateClient(served.url, token) as bot:

                @governed(
                    bot,
                    workflow="parking",
                    action_type="booking.create",
                    resource="lot-7/space-9",
                    confidence=0.95,
                )
                def book(customer: str) -> str:
                    calls.append(customer)
                    return "B-9"

                with pytest.raises(MandateError, match="webhook"):
                    book("C-9")
    # The webhook carried it out; this process did not do it a second time.
    assert calls == []
