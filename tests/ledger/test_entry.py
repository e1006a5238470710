"""Canonical entry bytes: RFC 8785 exactly, and values an entry may not hold refused by path."""

from __future__ import annotations

import json
import math
from typing import Any

import orjson
import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import entry as entry_module
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


# -- the float pre-test ---------------------------------------------------------------------------
#
# ``_may_hold_float`` answers "could these bytes hold a number token with a fraction or exponent?"
# with byte translations before the regex. A false positive only costs the exact path; a false
# negative would let orjson's bytes for a float pass as canonical, so these look for one.


def _regex_hit(data: bytes) -> bool:
    return entry_module._FLOAT_TOKEN.search(data) is not None


def _shapes(data: bytes) -> tuple[bool, bool]:
    """Whether each pre-test shape is in its translation."""
    drop = entry_module._NUMBER_DROP
    end = b".;" in data.translate(entry_module._END_SHAPE, drop)
    both = data.translate(entry_module._BOTH_SHAPE, drop)
    return end, b":.:" in both or b":..:" in both


numbers = (
    st.integers(min_value=-SAFE, max_value=SAFE)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([0.0, -0.0, 1.0, 1e21, 1e-7, 1.5e300, -2.5e-300, 123456.789])
)
# Strings made of the bytes the translations care about, to look like numbers and structure.
tricky_text = st.text(alphabet='0123456789-+.eEx:,[]{}" ', max_size=12)
json_with_numbers = st.recursive(
    st.none() | st.booleans() | numbers | tricky_text,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(tricky_text, children, max_size=4)
    ),
    max_leaves=12,
)


def _has_float(value: Any) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, list):
        return any(_has_float(v) for v in value)
    if isinstance(value, dict):
        return any(_has_float(v) for v in value.values())
    return False


@settings(max_examples=1500, deadline=None)
@given(json_with_numbers)
def test_the_pre_test_misses_no_float_in_minified_json(value: Any) -> None:
    data = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    if _regex_hit(data):
        assert _shapes(data) == (True, True)
    if _has_float(value):
        # Every float orjson writes is found: by a shape and the regex, or, standing alone, by
        # not being an object or array.
        assert entry_module._may_hold_float(data)
        with pytest.raises(EntryError):
            check_canonical(data)
        with pytest.raises(EntryError, match="floats are not allowed"):
            canonical_json(value)
    else:
        again = canonical_json(value)
        assert again == rfc8785.dumps(value)
        assert check_canonical(again) == value


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=40) | st.text(alphabet='0123456789-+.eE:,[]{}"ax', max_size=40))
def test_the_pre_test_shapes_hold_wherever_the_regex_matches(raw: bytes | str) -> None:
    # The proof is about bytes, not JSON: any match of the regex leaves both shapes.
    data = raw.encode() if isinstance(raw, str) else raw
    for candidate in (data, b"[" + data, b'{"k":' + data + b"}"):
        if _regex_hit(candidate):
            assert _shapes(candidate) == (True, True), candidate
            if candidate.startswith((b"{", b"[")):
                assert entry_module._may_hold_float(candidate)


@pytest.mark.parametrize(
    "data",
    [b'{"a":1.5}', b'{"a":[1,-2.5e+3]}', b'{"a":1E5}', b"[0.0]", b'{"a":{"b":[7,1e-7]}}'],
)
def test_floats_are_found_by_every_tier(data: bytes) -> None:
    assert _regex_hit(data)
    assert _shapes(data) == (True, True)
    assert entry_module._may_hold_float(data)
    with pytest.raises(EntryError, match="floats"):
        check_canonical(data)


@pytest.mark.parametrize(
    "data",
    [
        b'{"t":"2026-11-25T14:55:40.684834Z"}',  # a time: ":40." has no end after the fraction
        b'{"case":"case:C-0006727","amount":"12388.08"}',
        b'{"n":[1,2,3],"m":-4}',
    ],
)
def test_ordinary_entries_do_not_trip_the_pre_test(data: bytes) -> None:
    assert not entry_module._may_hold_float(data)


def test_strings_that_trip_the_pre_test_still_take_the_fast_answer() -> None:
    # A string holding ",e," or "x:1.5," has the shapes but no float: the regex says so.
    for value in ({"s": "a,e,b"}, {"s": "x:1.5,"}, {"s": "[1.5]"}):
        data = rfc8785.dumps(value)
        assert entry_module._may_hold_float(data) == _regex_hit(data)
        assert check_canonical(data) == value
        assert canonical_json(value) == data


def test_a_float_standing_alone_is_refused() -> None:
    # No ":,[" before it and no ",}]" after it for the regex to see.
    for value in (1.5, -2.0, 1e21):
        with pytest.raises(EntryError, match="floats are not allowed"):
            canonical_json(value)
        with pytest.raises(EntryError, match="floats are not allowed"):
            check_canonical(orjson.dumps(value))
    # Other values standing alone keep their JCS form.
    for other in (7, -3, True, None):
        assert canonical_json(other) == rfc8785.dumps(other)
        assert check_canonical(rfc8785.dumps(other)) == other


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("where", ["top", "nested"])
def test_non_finite_numbers_are_refused_not_written_as_null(number: float, where: str) -> None:
    value = {"x": number} if where == "top" else {"a": [1, {"b": number}]}
    with pytest.raises(EntryError) as caught:
        canonical_json(value)
    assert caught.value.path == ("body.x" if where == "top" else "body.a[1].b")
