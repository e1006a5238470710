"""``POST /v1/actions`` fuzzed with hypothesis-generated bodies, on a live gateway.

Proposal-shaped bodies with random values, wrong types, missing and extra fields, huge numbers,
floats where strings belong, unicode (non-NFC too), nested junk, and bodies that are no object.
Whatever comes in: never a 5xx; every error is problem+json, a 422 names each field; a verdict
is never ``execute`` for an action the role may not propose (policies/casbin/policy.csv); and
afterwards the ledger export verifies offline, holding exactly the verdicts that were answered.
"""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.keys import load_signing_key
from ledger.note import NoteVerifier
from ledger.verify import verify_export
from tests.gateway.support import POLICIES, PROBLEM_JSON, Gateway, http_client

# What each executor role proposes in the default bundle, and some it may not.
OWN = {
    "booking-agent": ("parking", ("booking.create", "booking.modify", "booking.cancel")),
    "payments-agent": ("parking", ("refund.issue", "refund.small")),
    "dispatch-agent": ("parking", ("shuttle.dispatch",)),
    "claims-agent": ("claims", ("claim.approve", "claim.pay", "claim.reject")),
}
ROLES = tuple(OWN)
WORKFLOWS = ("parking", "claims")
ACTION_TYPES = tuple(action for _, actions in OWN.values() for action in actions)
REQUIRED = ("workflow", "action_type", "resource", "case_type", "idempotency_key")
FIELDS = (*REQUIRED, "params", "confidence", "context")


def _policy_lines() -> list[list[str]]:
    with (POLICIES / "casbin" / "policy.csv").open() as file:
        rows = csv.reader(line for line in file if not line.lstrip().startswith("#"))
        return [[cell.strip() for cell in row] for row in rows if row]


POLICY_LINES = _policy_lines()


def _key_match(key: str, pattern: str) -> bool:
    """Casbin's keyMatch: ``*`` matches any rest of the key."""
    star = pattern.find("*")
    return key == pattern if star < 0 else key[:star] == pattern[:star]


def may_propose(role: str, workflow: str, action_type: str) -> bool:
    """Whether policy.csv lets ``role`` propose ``action_type`` in ``workflow``: read here
    from the file, apart from the gateway's Casbin (the fuzzed roles inherit nothing)."""
    return any(
        row[0] == "p"
        and row[1] == role
        and row[2] in ("*", workflow)
        and _key_match(action_type, row[3])
        and row[4] == "propose"
        for row in POLICY_LINES
    )


# -- the bodies ---------------------------------------------------------------------------------

# Strings that have tripped JSON and unicode handling elsewhere: decomposed and compatibility
# forms (not NFC), a bidi override, a NUL, astral characters, lone spaces, overlong ones.
TRICKY = st.sampled_from(
    [
        "e\u0301",
        "\u212b",
        "\ufb01",
        "\u202eevil",
        "a\x00b",
        "\U0001f600",
        " ",
        "",
        "booking.create ",
        "BOOKING.CREATE",
        "x" * 300,
        "../../etc/passwd",
    ]
)
TEXT = st.text(max_size=40) | TRICKY
HUGE = st.sampled_from([2**53 + 1, 2**63, 2**64, -(2**63) - 1, 10**40, -(10**40)])
NUMBERS = st.integers() | HUGE | st.floats(allow_nan=True, allow_infinity=True)
LEAVES = st.none() | st.booleans() | NUMBERS | TEXT
JSON = st.recursive(
    LEAVES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)
AMOUNTS = (
    st.decimals(allow_nan=False, allow_infinity=False, places=2).map(str)
    | st.floats()
    | st.integers()
    | st.sampled_from(["20.00", "-0", "1e3", "0x10", "9" * 40, "20,00", " 20"])
)


# Drawn in the idempotency key's place, then replaced by a key no example used before: most
# examples should reach a decision, not the 409 of a key reused for another body.
FRESH = "<a fresh key>"
PLAIN = st.text(max_size=20) | st.integers(-(10**6), 10**6) | st.booleans() | st.none()
BENDS = ("drop", "retype", "extra", "float", "huge", "unicode", "junk", "amount", "no object")


@st.composite
def proposals(draw: st.DrawFn) -> tuple[str, Any]:
    """An executor role and what it sends: a well-formed proposal with random values (half of
    the time one of the role's own actions), then bent in up to three ways (none, a
    quarter of the time): a field dropped or of another type, an extra field, a float or a
    huge number where a string belongs, unicode (not NFC too), nested junk, an odd amount, or
    no object at all."""
    role = draw(st.sampled_from(ROLES))
    if draw(st.booleans()):  # an action of its own, in its own workflow
        workflow, actions = OWN[role]
        action_type = draw(st.sampled_from(actions))
    else:
        workflow, action_type = (
            draw(st.sampled_from(WORKFLOWS)),
            draw(st.sampled_from(ACTION_TYPES)),
        )
    body: dict[str, Any] = {
        "workflow": workflow,
        "action_type": action_type,
        "resource": draw(st.text(st.characters(codec="ascii"), min_size=1, max_size=40)),
        "params": draw(st.dictionaries(st.text(max_size=10), PLAIN, max_size=3)),
        "case_type": draw(st.just(action_type) | st.sampled_from(ACTION_TYPES)),
        "idempotency_key": FRESH,
    }
    if draw(st.booleans()):
        body["confidence"] = draw(st.floats(0, 1))
    if draw(st.booleans()):
        body["context"] = draw(st.dictionaries(st.text(max_size=10), PLAIN, max_size=3))
    for _ in range(draw(st.integers(0, 3))):
        bend = draw(st.sampled_from(BENDS))
        name = draw(st.sampled_from(FIELDS))
        if bend == "drop":
            body.pop(name, None)
        elif bend == "retype":
            body[name] = draw(JSON)
        elif bend == "extra":
            body[draw(TEXT)] = draw(JSON)
        elif bend == "float":
            body[name] = draw(st.floats())
        elif bend == "huge":
            body[name] = draw(HUGE)
        elif bend == "unicode":
            body[name] = draw(TEXT)
        elif bend == "junk":
            place = draw(st.sampled_from(["params", "context"]))
            body[place] = _object(body.get(place)) | {draw(TEXT): draw(JSON)}
        elif bend == "amount":
            body["params"] = _object(body.get("params")) | {"amount": draw(AMOUNTS)}
        else:
            return role, draw(JSON)
    return role, body


def _object(value: Any) -> dict[str, Any]:
    """``value`` if an earlier bend left an object there, else an empty one."""
    return value if isinstance(value, dict) else {}


# -- the run ------------------------------------------------------------------------------------


def check_answer(
    status: int, headers: dict[str, str], answer: Any, role: str, body: Any
) -> dict[str, str] | None:
    """Everything a caller may rely on whatever they sent; the verdict (action id -> verdict)
    when one was given."""
    assert status < 500, (status, answer, body)
    if status >= 400:
        assert headers["content-type"].startswith(PROBLEM_JSON), (status, headers, body)
        assert answer["status"] == status, answer
        assert answer["title"], answer
        assert answer["detail"], answer
        if status == 422:
            fields = [error["field"] for error in answer["errors"]]
            assert fields, answer
            assert all(isinstance(f, str) and f for f in fields), answer
        return None
    assert status == 200, (status, answer)
    verdict = answer["verdict"]
    assert verdict in ("execute", "hold", "reject"), answer
    if not may_propose(role, body["workflow"], body["action_type"]):
        assert verdict == "reject", (role, body, answer)
        assert "not_permitted" in [reason["code"] for reason in answer["reasons"]], answer
    return {answer["action_id"]: verdict}


def test_fuzzed_proposals_never_fail_the_gateway_nor_execute_beyond_the_policy(
    sqlite_gateway: Gateway, tmp_path: Path
) -> None:
    gateway = sqlite_gateway
    tokens = {role: gateway.token(role) for role in ROLES}
    answered: dict[str, str] = {}
    keys = itertools.count()

    @settings(
        max_examples=150,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(proposals())
    def propose(sent: tuple[str, Any]) -> None:
        role, body = sent
        if isinstance(body, dict) and body.get("idempotency_key") == FRESH:
            body = body | {"idempotency_key": f"fuzz-{next(keys)}"}
        # Sent as Python's json writes it: NaN and Infinity too, which are not JSON (Python's
        # parser takes them as numbers; the gateway's strict parse refuses them, 422).
        raw = json.dumps(body, ensure_ascii=False).encode()
        headers = {"Authorization": f"Bearer {tokens[role]}", "Content-Type": "application/json"}
        with http_client(gateway.url, headers) as client:
            response = client.post("/v1/actions", content=raw)
        answer = response.json()
        verdict = check_answer(response.status_code, dict(response.headers), answer, role, body)
        if verdict is not None:
            answered.update(verdict)

    propose()

    assert gateway.healthy()
    auditor = gateway.token("auditor")
    path = tmp_path / "ledger.jsonl"
    with (
        http_client(gateway.url, {"Authorization": f"Bearer {auditor}"}) as client,
        client.stream("GET", "/v1/ledger/export") as export,
    ):
        assert export.status_code == 200
        with path.open("wb") as out:
            for chunk in export.iter_bytes():
                out.write(chunk)
    signer = load_signing_key(gateway.settings.key_path, gateway.settings.ledger_origin)
    result = verify_export(path, [NoteVerifier.from_vkey(signer.vkey)])
    entries = [orjson.loads(line) for line in path.read_bytes().splitlines()[: result.size]]
    recorded = {e["subject"]: e["body"]["verdict"] for e in entries if e["kind"] == "decision"}
    assert recorded == answered
