"""The rule that names MCP tools as action types (``gateway.client.mcp.naming``): names that already
are action types keep them, every other name maps to one of its own, and the rule undoes
itself."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.client.mcp.naming import action_type_from_tool, tool_from_action_type
from gateway.schemas import Proposal

ACTION_TYPE = re.compile(r"[a-z][a-z0-9_.-]{0,127}")  # as gateway.schemas takes it
tool_names = st.from_regex(r"[A-Za-z0-9_.-]{1,128}", fullmatch=True)


@pytest.mark.parametrize(
    ("tool", "action_type"),
    [
        ("write_file", "write_file"),
        ("list-issues", "list-issues"),
        ("readFile", "read.file"),
        ("getURL", "get.u.r.l"),
        ("ns.tool", "ns..tool"),
        ("ReadFile", "mcp.-.read.file"),
        ("2fa_reset", "mcp.-2fa_reset"),
        ("_private", "mcp.-_private"),
        (".hidden", "mcp.-..hidden"),
        ("a.-b", "a..-b"),
    ],
)
def test_the_documented_examples(tool: str, action_type: str) -> None:
    assert action_type_from_tool(tool) == action_type
    assert tool_from_action_type(action_type) == tool


@given(tool_names)
def test_every_tool_name_maps_back_from_its_action_type(name: str) -> None:
    action_type = action_type_from_tool(name)
    if action_type is None:  # only when escaping makes it too long
        assert len(name) + sum(c.isupper() or c == "." for c in name) + 5 > 128
        return
    assert ACTION_TYPE.fullmatch(action_type)
    Proposal(workflow="w", action_type=action_type, resource="r", idempotency_key="k")
    assert tool_from_action_type(action_type) == name


@given(st.from_regex(r"[a-z][a-z0-9_-]{0,127}", fullmatch=True))
def test_a_name_that_is_an_action_type_without_a_dot_is_its_own(name: str) -> None:
    assert action_type_from_tool(name) == name


@given(tool_names, tool_names)
def test_two_tools_never_share_an_action_type(first: str, second: str) -> None:
    if first != second:
        assert action_type_from_tool(first) != action_type_from_tool(second) or (
            action_type_from_tool(first) is None
        )


@given(st.from_regex(r"[a-z][a-z0-9_.-]{0,127}", fullmatch=True))
def test_an_action_type_names_at_most_one_tool_and_that_one_maps_to_it(action_type: str) -> None:
    tool = tool_from_action_type(action_type)
    if tool is not None:
        assert action_type_from_tool(tool) == action_type


@pytest.mark.parametrize(
    "action_type", ["a.1", "a.", "a.-b.c", "mcp.-abc", "mcp.-", "x.Y", "refund.issue."]
)
def test_action_types_the_rule_never_writes_name_no_tool(action_type: str) -> None:
    assert tool_from_action_type(action_type) is None


@pytest.mark.parametrize("name", ["", "has space", "slash/tool", "ünïcode", "x" * 129, "A" * 100])
def test_a_tool_name_outside_the_pattern_or_too_long_escaped_has_no_action_type(name: str) -> None:
    assert action_type_from_tool(name) is None
