"""The inbox at volume, in SQL, on SQLite and on PostgreSQL: pages of 50, filters by workflow,
case type, reason code, executor and age, free-text search, sort by expiry, the counts per
filter value, and who sees what (approvers their workflows, executors their own proposals).

The approvals are made by proposing over HTTP to a real gateway; ``Approvals.page`` is what
the ``/ui/`` page calls (its page test is ``tests/ui/test_inbox_volume.py``).
"""

from __future__ import annotations

from collections import Counter

import pydantic
import pytest

from gateway.approvals.inbox import PAGE_SIZE, InboxQuery
from gateway.identity import Identity
from tests.approvals.conftest import Launch
from tests.approvals.harness import Clock, Live, held_claim, proposal, propose
from tests.conftest import Database

REFUNDS = 53
CLAIMS = 3


def who(live: Live, token: str) -> Identity:
    identity = live.runtime.tokens.lookup(token)
    assert identity is not None
    return identity


@pytest.fixture
def filled(database: Database, launch: Launch) -> tuple[Live, Clock, dict[str, str]]:
    clock = Clock()
    live = launch(database, clock=clock)
    tokens = {
        "payments": live.token("payments-agent"),
        "claims": live.token("claims-agent"),
        "approver": live.token("approver"),
        "claims-approver": live.token("approver", workflow="claims"),
    }
    payments = live.client(tokens["payments"])
    for n in range(REFUNDS):
        body = proposal("parking", "refund.issue", amount="20", resource=f"booking/B-{n}")
        propose(payments, body, "hold")
    for _ in range(CLAIMS):
        held_claim(live.client(tokens["claims"]))
    return live, clock, tokens


def test_pages_of_fifty_newest_first_cover_every_approval_once(
    filled: tuple[Live, Clock, dict[str, str]],
) -> None:
    live, _, tokens = filled
    approver = who(live, tokens["approver"])
    first, rows = live.runtime.approvals.page(approver, InboxQuery())
    assert (first.total, first.pages, len(rows)) == (REFUNDS + CLAIMS, 2, PAGE_SIZE)
    _second, more = live.runtime.approvals.page(approver, InboxQuery(page=2))
    assert len(more) == REFUNDS + CLAIMS - PAGE_SIZE
    created = [v.created_at for v in [*rows, *more]]
    assert created == sorted(created, reverse=True)
    assert len({v.id for v in [*rows, *more]}) == REFUNDS + CLAIMS
    # a page past the last is the last
    past, again = live.runtime.approvals.page(approver, InboxQuery(page=9))
    assert past.page == 2
    assert [v.id for v in again] == [v.id for v in more]


def test_filters_narrow_and_each_facet_counts_without_its_own_filter(
    filled: tuple[Live, Clock, dict[str, str]],
) -> None:
    live, _, tokens = filled
    approver = who(live, tokens["approver"])
    everything = [
        v
        for page in (1, 2)
        for v in live.runtime.approvals.page(approver, InboxQuery(page=page))[1]
    ]
    codes = Counter(code for v in everything for code in {r.code for r in v.reasons})

    found, rows = live.runtime.approvals.page(approver, InboxQuery(workflow="claims"))
    assert found.total == CLAIMS
    assert {v.workflow for v in rows} == {"claims"}
    assert dict(found.facets["workflow"]) == {"parking": REFUNDS, "claims": CLAIMS}
    assert dict(found.facets["executor"]) == {rows[0].executor: CLAIMS}
    assert dict(found.facets["case_type"]) == {"claim.approve": CLAIMS}

    unfiltered, _ = live.runtime.approvals.page(approver, InboxQuery())
    assert dict(unfiltered.facets["reason"]) == dict(codes)
    code = next(c for c in codes if codes[c] == CLAIMS)  # a reason only the claims have
    by_reason, rows = live.runtime.approvals.page(approver, InboxQuery(reason=code))
    assert by_reason.total == CLAIMS
    assert all(code in {r.code for r in v.reasons} for v in rows)

    found, rows = live.runtime.approvals.page(approver, InboxQuery(executor=rows[0].executor))
    assert found.total == CLAIMS

    # an unknown value is listed with 0, so the choice stays visible
    none, rows = live.runtime.approvals.page(approver, InboxQuery(workflow="nowhere"))
    assert (none.total, rows) == (0, [])
    assert ("nowhere", 0) in none.facets["workflow"]


def test_age_buckets_and_sort_by_expiry(filled: tuple[Live, Clock, dict[str, str]]) -> None:
    live, clock, tokens = filled
    approver = who(live, tokens["approver"])
    everyone = REFUNDS + CLAIMS
    recent, _ = live.runtime.approvals.page(approver, InboxQuery(age="hour"))
    assert recent.total == everyone
    assert dict(recent.facets["age"]) == {"hour": everyone, "day": 0, "week": 0, "older": 0}
    clock.advance(hours=2)  # still within their day to expire
    held, _ = live.runtime.approvals.page(approver, InboxQuery(age="day"))
    assert held.total == everyone
    assert dict(held.facets["age"]) == {"hour": 0, "day": everyone, "week": 0, "older": 0}
    assert live.runtime.approvals.page(approver, InboxQuery(age="hour"))[0].total == 0

    _, by_expiry = live.runtime.approvals.page(approver, InboxQuery(sort="expiry"))
    expiries = [v.expires_at for v in by_expiry]
    assert expiries == sorted(expiries)


def test_search_is_free_text_over_action_resource_and_executor(
    filled: tuple[Live, Clock, dict[str, str]],
) -> None:
    live, _, tokens = filled
    approver = who(live, tokens["approver"])
    found, rows = live.runtime.approvals.page(approver, InboxQuery(q="b-1"))  # any case
    expected = {f"booking/B-{n}" for n in range(REFUNDS) if str(n).startswith("1")}
    assert {v.resource for v in rows} == expected
    assert found.total == len(expected)
    found, _ = live.runtime.approvals.page(approver, InboxQuery(q="CLAIM.APP"))
    assert found.total == CLAIMS
    found, _ = live.runtime.approvals.page(approver, InboxQuery(q="payments"))
    assert found.total == REFUNDS
    # LIKE's wildcards are searched for as they are, not as wildcards
    for literal in ("%", "_", "B-_"):
        found, _ = live.runtime.approvals.page(approver, InboxQuery(q=literal))
        assert found.total == 0, literal


def test_each_person_sees_their_share(filled: tuple[Live, Clock, dict[str, str]]) -> None:
    live, _, tokens = filled
    bound, rows = live.runtime.approvals.page(who(live, tokens["claims-approver"]), InboxQuery())
    assert bound.total == CLAIMS
    assert {v.workflow for v in rows} == {"claims"}
    # an executor sees their own held proposals, and nobody else's
    own, rows = live.runtime.approvals.page(who(live, tokens["claims"]), InboxQuery())
    assert own.total == CLAIMS
    assert {v.action_type for v in rows} == {"claim.approve"}
    stranger = who(live, live.token("payments-agent"))
    assert live.runtime.approvals.page(stranger, InboxQuery())[0].total == 0


@pytest.mark.parametrize(
    ("given", "field"),
    [
        ({"page": "0"}, "page"),
        ({"page": "two"}, "page"),
        ({"age": "month"}, "age"),
        ({"sort": "amount"}, "sort"),
        ({"status": "open"}, "status"),
        ({"workflow": "w" * 129}, "workflow"),
        ({"q": "x" * 201}, "q"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_a_wrong_query_names_its_field(given: dict[str, str], field: str) -> None:
    with pytest.raises(pydantic.ValidationError) as caught:
        InboxQuery.model_validate(given)
    assert caught.value.errors()[0]["loc"][0] == field


def test_links_keep_the_view_and_drop_what_is_default() -> None:
    blank = dict.fromkeys(("workflow", "case_type", "reason", "executor", "age", "q"), "")
    assert InboxQuery.model_validate(blank) == InboxQuery()  # the form's "any" is no filter
    query = InboxQuery.model_validate({"workflow": "claims", "q": "a b&c", "page": "3", "age": ""})
    assert query.age is None
    assert query.link() == "?workflow=claims&q=a+b%26c"
    assert query.link(page=2) == "?workflow=claims&q=a+b%26c&page=2"
    assert query.cleared() == "?"
    assert InboxQuery(status="all").cleared() == "?status=all"
