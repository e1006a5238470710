"""MCP tool names as action types, and back: one documented rule that undoes itself.

An action type is 1 to 128 of ``a-z 0-9 _ . -`` starting with a letter; an MCP tool name is 1 to
128 of ``A-Z a-z 0-9 _ . -`` (the specification's pattern). The dot is the escape character:
tool names rarely hold one, as the tool-name patterns of the common LLM APIs leave it out.

1. Each ``.`` becomes ``..``, and each capital letter ``X`` becomes ``.x``.
2. A name that does not then start with a lowercase letter gets the prefix ``mcp.-``.

So ``write_file`` stays ``write_file`` (a name that is an action type already and has no dot
is its own action type), ``readFile`` is ``read.file``, ``getURL`` is ``get.u.r.l``,
``ns.tool`` is ``ns..tool``, ``ReadFile`` is ``mcp.-.read.file`` and ``2fa_reset`` is
``mcp.-2fa_reset``. After the prefix every dot starts a pair, ``..`` or a dot and a lowercase
letter, so reading left to right undoes it: an action type names at most one tool, and
``tool_from_action_type(action_type_from_tool(name)) == name``. A tool whose name holds other
characters, or whose action type would be longer than 128 characters, has none: it cannot be
proposed, and the proxy neither lists it nor calls it.
"""

from __future__ import annotations

import re

__all__ = ["action_type_from_tool", "tool_from_action_type"]

_ACTION_TYPE = re.compile(r"[a-z][a-z0-9_.-]{0,127}")
_TOOL_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")
_PREFIX = "mcp.-"  # the only place a dot is followed by a hyphen


def action_type_from_tool(name: str) -> str | None:
    """The action type a call of the tool ``name`` is proposed as; None when it has none."""
    if not _TOOL_NAME.fullmatch(name):
        return None
    escaped = "".join(
        ".." if char == "." else f".{char.lower()}" if "A" <= char <= "Z" else char for char in name
    )
    if not "a" <= escaped[0] <= "z":
        escaped = _PREFIX + escaped
    return escaped if _ACTION_TYPE.fullmatch(escaped) else None


def tool_from_action_type(action_type: str) -> str | None:
    """The tool whose calls are proposed as ``action_type``; None when no tool's are."""
    body = action_type.removeprefix(_PREFIX)
    name: list[str] = []
    i = 0
    while i < len(body):
        char = body[i]
        if char != ".":
            name.append(char)
            i += 1
            continue
        escaped = body[i + 1 : i + 2]
        if escaped == ".":
            name.append(".")
        elif "a" <= escaped <= "z":
            name.append(escaped.upper())
        else:
            return None
        i += 2
    tool = "".join(name)
    # Only the form the rule writes maps back (not "mcp.-abc", say, which it writes "abc").
    return tool if tool and action_type_from_tool(tool) == action_type else None
