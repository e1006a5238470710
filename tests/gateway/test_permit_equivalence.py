"""The Permitter splits the policy into small enforcers and caches answers; it must answer
exactly what one pycasbin enforcer over the whole policy answers."""

from __future__ import annotations

from pathlib import Path

import casbin
from casbin.model import Model
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.policy.permit import Permitter

MODEL = (Path(__file__).resolve().parents[2] / "policies" / "casbin" / "model.conf").read_text()
ROLES = ["agent", "senior", "lead", "approver", "governor"]
WORKFLOWS = ["parking", "claims", "*"]
OBJECTS = ["booking.create", "booking.*", "refund.issue", "refund.*", "*", "claim.approve"]
ACTS = ["propose", "approve", "govern"]

rules = st.lists(
    st.tuples(
        st.sampled_from(ROLES),
        st.sampled_from(WORKFLOWS),
        st.sampled_from(OBJECTS),
        st.sampled_from(ACTS),
    ),
    max_size=25,
    unique=True,
)
groupings = st.lists(
    st.tuples(
        st.sampled_from(ROLES), st.sampled_from(ROLES), st.sampled_from(["parking", "claims"])
    ).filter(lambda g: g[0] != g[1]),
    max_size=6,
    unique=True,
)
requests = st.lists(
    st.tuples(
        st.sampled_from(ROLES),
        st.sampled_from(["parking", "claims"]),
        st.sampled_from(["booking.create", "refund.issue", "claim.approve", "shuttle.go"]),
        st.sampled_from(ACTS),
    ),
    min_size=1,
    max_size=12,
)


def reference(p: list[tuple[str, ...]], g: list[tuple[str, ...]]) -> casbin.Enforcer:
    model = Model()
    model.load_model_from_text(MODEL)
    enforcer = casbin.Enforcer(model)
    if p:
        enforcer.add_policies([list(rule) for rule in p])
    if g:
        enforcer.add_grouping_policies([list(rule) for rule in g])
    return enforcer


@settings(max_examples=150, deadline=None)
@given(rules, groupings, requests)
def test_the_permitter_answers_as_one_enforcer_over_the_whole_policy(
    p: list[tuple[str, ...]], g: list[tuple[str, ...]], asked: list[tuple[str, str, str, str]]
) -> None:
    text = "\n".join([", ".join(("p", *rule)) for rule in p] + [", ".join(("g", *r)) for r in g])
    permitter = Permitter(MODEL, text)
    whole = reference(p, g)
    for request in asked + asked:  # the second round answers from the cache
        assert permitter.permit(*request).allowed == whole.enforce(*request), request
