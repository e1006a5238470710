"""Decision integrity, as properties over generated proposals, roles, levels and figures.

- Never an execute where Casbin denies; never a case type the bundle does not list for the
  action type, whatever the proposer claims.
- Never an execute at level 1, and nothing dispatched before quorum.
- Never a self-approval: no vote from the proposer's owner counts.
- Never the execution of anything but the exact approved proposal: what reaches the webhook
  receiver is what was proposed, byte for byte in its params (in canonical form).

The first property runs the gateway's own steps (``gateway.decision.redecide``: validate, permit,
evaluate, decide) on thousands of inputs; the others run a real gateway on loopback with the
example receiver, a few dozen generated scenarios each.
"""

from __future__ import annotations

import itertools
import unicodedata
from collections.abc import Iterator
from typing import Any

import pytest
import rfc8785
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.examples.receiver import Receiver, running_receiver
from gateway.autonomy.figures import ZERO_FIGURES
from gateway.db.tables import INTENTS
from gateway.decision.redecide import Inputs, redecide
from gateway.identity import Identity
from gateway.policy.active import build_policy
from gateway.policy.bundle import load_bundle
from gateway.schemas import Proposal
from tests.approvals.harness import SECRET, Live, settings_for, start, wait_for
from tests.conftest import Database
from tests.policies.support import POLICIES

POLICY = build_policy(load_bundle(POLICIES))
ROLES = [*sorted(POLICY.permitter.roles), "approver", "governor", "auditor", "intruder"]
ACTIONS = (
    ("parking", "booking.create"),
    ("parking", "booking.modify"),
    ("parking", "booking.cancel"),
    ("parking", "refund.issue"),
    ("parking", "shuttle.dispatch"),
    ("claims", "claim.approve"),
    ("claims", "claim.pay"),
    ("claims", "refund.issue"),
    ("parking", "claim.approve"),
)
CASE_TYPES = sorted(
    {name for config in POLICY.bundle.workflows.values() for name in config.case_types}
)
_names = itertools.count()

amounts = st.one_of(
    st.none(),
    st.decimals(min_value=0, max_value=100_000, places=2, allow_nan=False).map(str),
)
figures = st.fixed_dictionaries({name: st.integers(0, 10_000) for name in ZERO_FIGURES})


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Identity, Proposal, int, dict[str, int]]:
    workflow, action_type = draw(st.sampled_from(ACTIONS))
    params: dict[str, Any] = {}
    amount = draw(amounts)
    if amount is not None:
        params["amount"] = amount
    if draw(st.booleans()):
        params["lot"] = draw(st.sampled_from(["lot-1", "lot-2"]))
    proposal = Proposal(
        workflow=workflow,
        action_type=action_type,
        resource="thing/1",
        params=params,
        case_type=draw(st.one_of(st.none(), st.just(action_type), st.sampled_from(CASE_TYPES))),
        confidence=draw(st.one_of(st.none(), st.floats(0, 1))),
        context=draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "litigation": st.booleans(),
                    "current_lot": st.sampled_from(["lot-1", "lot-2"]),
                },
            )
        ),
        idempotency_key=f"p-{next(_names)}",
    )
    role = draw(st.sampled_from(ROLES))
    identity = Identity("tok", f"{role}-x", role, None, f"{role}-x")
    return identity, proposal, draw(st.integers(1, 4)), draw(figures)


@settings(max_examples=1500, deadline=None, derandomize=True)
@given(scenarios())
def test_never_an_execute_where_casbin_denies_nor_at_level_1(
    scenario: tuple[Identity, Proposal, int, dict[str, int]],
) -> None:
    identity, proposal, level, stats = scenario
    inputs = Inputs.of(identity, proposal, level, stats, "2026-06-01T09:00:00.000000Z")
    got = redecide(POLICY, inputs)
    allowed = POLICY.permitter.permit(
        identity.role, proposal.workflow, proposal.action_type, "propose"
    ).allowed
    if not allowed:
        assert got.verdict in ("reject", "refused"), got
        if got.verdict == "reject":
            assert got.codes == ["not_permitted"]
    if level == 1:
        assert got.verdict != "execute", got
        if got.verdict == "hold":
            assert "advisory_level" in got.codes
    if got.verdict == "execute":
        assert allowed
        assert level > 1
        assert got.reasons == []
    if got.verdict in ("execute", "hold", "reject"):
        # Decided as a case type the bundle lists for the action type, whatever was claimed.
        config = POLICY.bundle.workflows[proposal.workflow]
        assert got.case_type in config.action_types[proposal.action_type]
    # The same inputs always decide the same way.
    assert redecide(POLICY, inputs) == got


# -- a real gateway: votes, quorum, dispatch -------------------------------------------------


class World:
    """A gateway with a webhook receiver, and tokens to vote with."""

    def __init__(self, live: Live, receiver: Receiver) -> None:
        self.live = live
        self.receiver = receiver

    def token(self, role: str, *, owner: str | None = None, workflow: str | None = None) -> str:
        return self.live.token(role, owner=owner, workflow=workflow)

    def intents(self, action_id: str) -> int:
        with self.live.runtime.engine.connect() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count())
                    .select_from(INTENTS)
                    .where(INTENTS.c.action_id == action_id)
                ).scalar_one()
            )

    def delivered(self, action_id: str) -> dict[str, Any] | None:
        with self.receiver.lock:
            return self.receiver.done.get(action_id)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("properties")
    receiver = Receiver(SECRET.encode())
    with running_receiver(receiver) as url:
        live = start(
            settings_for(
                Database(f"sqlite:///{root / 'mandate.db'}"),
                root / "data",
                webhooks={"parking": url, "claims": url},
            )
        )
        try:
            yield World(live, receiver)
        finally:
            live.stop()


# Who votes, in order: a fresh approver, the same approver again, or someone of the proposer's
# own owner (an approver token, or the executor's own): only fresh approvers may count.
voters = st.lists(st.sampled_from(["fresh", "again", "own-approver", "own-executor"]), max_size=6)


@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    kind=st.sampled_from(["refund", "claim"]),
    plan=voters,
    confidence=st.floats(0.5, 1.0),
)
def test_no_dispatch_before_quorum_and_no_self_approval(
    world: World, kind: str, plan: list[str], confidence: float
) -> None:
    owner = f"team-{next(_names)}"
    if kind == "refund":  # level 1: held whatever the policy says, quorum 1
        executor = world.token("payments-agent", owner=owner)
        body = _body("parking", "refund.issue", "20.00", confidence)
    else:  # level 3, over the review threshold: held, quorum 2
        executor = world.token("claims-agent", owner=owner)
        body = _body("claims", "claim.approve", "12000", confidence)
    client = world.live.client(executor)
    answer = client.post("/v1/actions", json=body).json()
    assert answer["verdict"] != "execute", answer
    if answer["verdict"] != "hold":
        return
    action_id, approval = answer["action_id"], answer["approval"]
    workflow = body["workflow"]
    counted: set[str] = set()
    last_fresh: str | None = None
    for who in [*plan, *["fresh"] * approval["quorum"]]:
        if len(counted) >= approval["quorum"]:
            break
        if who == "fresh" or (who == "again" and last_fresh is None):
            token = last_fresh = world.token("approver", workflow=workflow)
        elif who == "again":
            token = last_fresh  # type: ignore[assignment]
        elif who == "own-approver":
            token = world.token("approver", owner=owner, workflow=workflow)
        else:
            token = executor
        response = world.live.client(token).post(
            f"/v1/approvals/{approval['id']}/decisions", json={"decision": "approve"}
        )
        if who.startswith("own"):
            assert response.status_code == 403, response.text
        else:
            assert response.status_code == 200, response.text
            counted.add(token)
        view = world.live.client(token if not who.startswith("own") else executor)
        state = view.get(f"/v1/approvals/{approval['id']}").json()
        assert state["approvals"] == len(counted)
        if len(counted) < approval["quorum"]:
            # Before quorum: no intent, nothing at the receiver.
            assert world.intents(action_id) == 0
            assert world.delivered(action_id) is None
    wait_for(lambda: world.delivered(action_id) is not None, what="the delivery")
    assert world.intents(action_id) == 1


def _body(workflow: str, action_type: str, amount: str, confidence: float) -> dict[str, Any]:
    return {
        "workflow": workflow,
        "action_type": action_type,
        "resource": f"thing/{next(_names)}",
        "params": {"amount": amount},
        "case_type": action_type,
        "confidence": confidence,
        "idempotency_key": f"prop-{next(_names)}",
    }


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**53) + 1, 2**53 - 1),
    st.text(st.characters(exclude_categories=["Cs"]), max_size=20).map(_nfc),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(max_size=8).map(_nfc), inner, max_size=4),
    ),
    max_leaves=12,
)


@settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    extra=st.dictionaries(
        st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=10)
        .map(_nfc)
        .filter(lambda k: k != "amount"),
        json_values,
        max_size=5,
    ),
    amount=st.decimals(min_value="0.50", max_value=1000, places=2, allow_nan=False).map(str),
)
def test_what_reaches_the_receiver_is_exactly_what_was_approved(
    world: World, extra: dict[str, Any], amount: str
) -> None:
    executor = world.token("payments-agent")
    params = {"amount": amount, **extra}
    body = _body("parking", "refund.issue", amount, 0.99) | {"params": params}
    del body["case_type"]  # the bundle decides it
    answer = world.live.client(executor).post("/v1/actions", json=body)
    assert answer.status_code == 200, answer.text
    held = answer.json()
    assert held["verdict"] == "hold", held  # level 1: a person approves every refund
    approver = world.live.client(world.token("approver", workflow="parking"))
    voted = approver.post(
        f"/v1/approvals/{held['approval']['id']}/decisions", json={"decision": "approve"}
    )
    assert voted.status_code == 200, voted.text
    action_id = held["action_id"]
    wait_for(lambda: world.delivered(action_id) is not None, what="the delivery")
    payload = world.delivered(action_id)
    assert payload is not None
    assert rfc8785.dumps(payload["params"]) == rfc8785.dumps(params)
    assert payload["params"] == params
    for name in ("workflow", "action_type", "resource"):
        assert payload[name] == body[name]
    assert payload["case_type"] == "refund.issue"
    assert world.receiver.calls[action_id] == 1
