"""Canonical entry bytes: RFC 8785 exactly, and values an entry may not hold refused by path."""

from __future__ import annotations

import json
from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.entry import (
    GENESIS_PREV,
    canonical_json,
    check_canonical,
    encode_entry,
    parse_entry,
)
from ledger.errors import EntryError

SAFE = 2**53 - 1


def test_keys_sort_by_utf16_code_units_not_code_points() -> None:
    # U+E000 sorts after U+1F600 in UTF-16 (0xE000 > 0xD83D), before it by code point.
    value = {"\ue000": 1, "\U0001f600": 2, "a": 3}
    assert canonical_json(value) == '{"a":3,"\U0001f600":2,"\ue000":1}'.encode()


def test_escapes_follow_rfc8785() -> None:
    value = {"s": '\x00\x08\t\n\x0c\r\x1f"\\/\x7f\u2028'}
    assert canonical_json(value) == b'{"s":"\\u0000\\b\\t\\n\\f\\r\\u001f\\"\\\\/\x7f\xe2\x80\xa8"}'


def test_non_bmp_characters_are_kept_as_utf8() -> None:
    assert canonical_json({"e": "\U0001f600"}) == '{"e":"\U0001f600"}'.encode()


def test_floats_are_refused_with_their_path() -> None:
    with pytest.raises(EntryError) as err:
        canonical_json({"params": {"amount": 1.0}})
    assert err.value.path == "body.params.amount"
    assert "strings" in err.value.problem


def test_integers_beyond_2_53_are_refused() -> None:
    assert canonical_json({"n": SAFE}) == b'{"n":9007199254740991}'
    with pytest.raises(EntryError, match="2\\*\\*53"):
        canonical_json({"n": SAFE + 1})


def test_non_nfc_strings_are_refused() -> None:
    with pytest.raises(EntryError, match="NFC") as err:
        canonical_json({"name": "Zoe\u0301"})  # e + combining acute, NFC is U+00E9
    assert err.value.path == "body.name"
    assert canonical_json({"name": "Zo\u00e9"}) == '{"name":"Zo\u00e9"}'.encode()


def test_non_json_values_and_keys_are_refused() -> None:
    with pytest.raises(EntryError, match="keys must be strings"):
        canonical_json({1: "x"})
    with pytest.raises(EntryError, match="not a JSON value"):
        canonical_json({"when": object()})


def test_a_string_that_looks_like_a_float_stays_a_string() -> None:
    value = {"note": "ratio:1.5,", "t": "13:05:10.5]"}
    assert canonical_json(value) == rfc8785.dumps(value)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-SAFE, max_value=SAFE)
    | st.text(st.characters(codec="utf-8")),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(st.characters(codec="utf-8"), max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_fast_path_agrees_with_rfc8785(value: Any) -> None:
    try:
        reference = rfc8785.dumps(value)
    except Exception:
        reference = None
    try:
        ours = canonical_json(value)
    except EntryError:
        # Refused values are exactly the non-NFC ones here (no floats or big ints generated).
        assert _has_non_nfc(value)
        return
    assert ours == reference
    assert check_canonical(ours) == json.loads(ours)


def _has_non_nfc(value: Any) -> bool:
    import unicodedata

    if isinstance(value, str):
        return not unicodedata.is_normalized("NFC", value)
    if isinstance(value, list):
        return any(_has_non_nfc(v) for v in value)
    if isinstance(value, dict):
        return any(_has_non_nfc(k) or _has_non_nfc(v) for k, v in value.items())
    return False


@pytest.mark.parametrize(
    "data",
    [
        b'{"a":1, "b":2}',  # whitespace
        b'{"b":1,"a":2}',  # key order
        b'{"a":1.0}',  # 1.0 is 1 in JCS, and floats are refused anyway
        b'{"a":1e3}',
        b'{"a":"\\u0041"}',  # needless escape
        b'{"a":1,"a":1}',  # duplicate key
        b'{"a":-0}',
        b'{"a":18446744073709551616}',
        b'{"a":"\\u001F"}',  # upper-case hex escape
        b"not json",
    ],
)
def test_non_canonical_bytes_are_refused(data: bytes) -> None:
    with pytest.raises(EntryError):
        check_canonical(data)


def test_entry_round_trip() -> None:
    body = canonical_json({"amount": "20.00", "who": "Zo\u00e9"})
    data = encode_entry(
        seq=7,
        time="2026-11-25T13:05:10.000001Z",
        kind="proposal",
        actor="booking-agent",
        subject="act_1",
        body=body,
        prev=GENESIS_PREV,
    )
    entry = parse_entry(data)
    assert rfc8785.dumps(entry.to_dict()) == data
    assert entry.seq == 7
    assert entry.body == {"amount": "20.00", "who": "Zo\u00e9"}


def test_bad_kind_is_refused() -> None:
    with pytest.raises(EntryError, match="kind"):
        encode_entry(
            seq=0, time="t", kind="Bad Kind", actor="a", subject="s", body=b"{}", prev=GENESIS_PREV
        )
