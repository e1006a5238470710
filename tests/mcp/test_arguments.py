"""A tool call's arguments as a proposal (``gateway.client.mcp.arguments``): what the ledger records
is what is forwarded, malformed arguments are refused with the argument named, and approvers
read the resource the workflow names."""

from __future__ import annotations

import math
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.client.mcp.arguments import (
    ArgumentError,
    check_arguments,
    params_from_arguments,
    resource_from_arguments,
)
from ledger.entry import canonical_json

WRITE_FILE = {  # the filesystem server's schema, as it lists it
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
    "required": ["path", "content"],
}


@pytest.mark.parametrize(
    ("number", "text"),
    [
        (0.1, "0.1"),
        (1e-7, "0.0000001"),
        (2.0, "2.0"),
        (-0.0, "-0.0"),
        (1e22, "10000000000000000000000"),
        (123456789.12345679, "123456789.12345679"),
        (2**60, "1152921504606846976"),
        (-(2**53), "-9007199254740992"),
    ],
)
def test_numbers_the_ledger_cannot_hold_are_recorded_as_exact_decimal_text(
    number: float, text: str
) -> None:
    assert params_from_arguments({"x": number}) == {"x": text}


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_the_recorded_text_reads_back_as_the_number_forwarded(number: float) -> None:
    params = params_from_arguments({"nested": [{"x": number}]})
    text = params["nested"][0]["x"]
    assert "e" not in text.lower()
    assert float(text) == number
    assert math.copysign(1, float(text)) == math.copysign(1, number)
    assert Decimal(text) == Decimal(repr(number))
    canonical_json(params, "params")  # the ledger takes it


def test_integers_strings_and_the_rest_are_recorded_as_sent() -> None:
    sent = {"n": 5, "big": 2**53 - 1, "ok": True, "none": None, "s": "ü", "list": [1, "a"]}
    assert params_from_arguments(sent) == sent


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
def test_a_number_that_is_not_finite_is_refused_naming_the_argument(number: float) -> None:
    with pytest.raises(ArgumentError) as caught:
        params_from_arguments({"edits": [{"ratio": number}]})
    assert caught.value.path == "edits[0].ratio"


def test_arguments_are_checked_against_the_tools_input_schema() -> None:
    check_arguments(WRITE_FILE, {"path": "/srv/a", "content": "x"})
    with pytest.raises(ArgumentError, match="'content' is a required property"):
        check_arguments(WRITE_FILE, {"path": "/srv/a"})
    with pytest.raises(ArgumentError) as caught:
        check_arguments(WRITE_FILE, {"path": 7, "content": "x"})
    assert caught.value.path == "path"
    with pytest.raises(ArgumentError, match="schema is unusable"):
        check_arguments({"type": "no-such-type"}, {})
    check_arguments(None, {"anything": 1})


def test_the_resource_is_the_argument_the_workflow_names() -> None:
    assert resource_from_arguments({"path": "/srv/a.txt"}, "path", "write_file") == "/srv/a.txt"
    assert resource_from_arguments({"paths": ["/a", "/b"]}, "paths", "read_multiple_files") == (
        "/a, /b"
    )
    assert resource_from_arguments({}, None, "list_allowed_directories") == (
        "list_allowed_directories"
    )
    assert resource_from_arguments({"path": ""}, "path", "write_file") == "write_file"
    assert resource_from_arguments({"path": 7}, "path", "write_file") == "write_file"
    long = resource_from_arguments({"path": "/" + "a" * 400}, "path", "write_file")
    assert len(long) == 256
    assert long.endswith("…")
    assert long.startswith("/aaa")
