"""A tool call's arguments as a proposal: checked against the tool's input schema, recorded as
params so that the ledger holds what is forwarded, and named by a resource people can read.

The ledger holds no floats, and integers only within ±(2**53 - 1), so that every verifier reads
the same numbers (``ledger.entry``). A number the proxy forwards that is not such an integer is
recorded as its exact decimal text: the shortest decimal that reads back as the very number
forwarded (Python's ``repr`` of it), written without an exponent. ``0.1`` is ``"0.1"``,
``1e-7`` is ``"0.0000001"``, ``2.0`` is ``"2.0"``, 2**60 is ``"1152921504606846976"``. NaN and
the infinities are no JSON numbers: such a call is refused before anything is proposed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import jsonschema
from jsonschema.exceptions import SchemaError, best_match

__all__ = [
    "MAX_RESOURCE",
    "ArgumentError",
    "check_arguments",
    "params_from_arguments",
    "resource_from_arguments",
]

MAX_RESOURCE = 256  # characters, as the gateway takes a proposal's resource
_MAX_SAFE_INTEGER = 2**53 - 1


class ArgumentError(ValueError):
    """Arguments the proxy does not propose: they break the tool's input schema, or hold a
    number that is not finite. ``path`` names the argument (``edits[0].oldText``)."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}" if path else problem)
        self.path = path
        self.problem = problem


def check_arguments(schema: Mapping[str, Any] | None, arguments: Mapping[str, Any]) -> None:
    """Raise ArgumentError unless ``arguments`` meet the tool's input schema (the JSON Schema
    dialect it names, draft 2020-12 when it names none)."""
    if schema is None:
        return
    try:
        kind = jsonschema.validators.validator_for(schema)
        kind.check_schema(schema)
    except SchemaError as exc:
        raise ArgumentError("", f"the tool's input schema is unusable: {exc.message}") from None
    error = best_match(kind(schema).iter_errors(dict(arguments)))
    if error is not None:
        raise ArgumentError(error.json_path.removeprefix("$").lstrip("."), error.message)


def params_from_arguments(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The proposal's params: the arguments, with each number that the ledger cannot hold as
    a number (not an integer, or an integer beyond ±(2**53 - 1)) as its exact decimal text."""
    return {key: _recorded(value, key) for key, value in arguments.items()}


def _recorded(value: Any, path: str) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value if abs(value) <= _MAX_SAFE_INTEGER else str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ArgumentError(path, f"{value} is not a number JSON can carry")
        return format(Decimal(repr(value)), "f")
    if isinstance(value, Mapping):
        return {key: _recorded(item, f"{path}.{key}") for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_recorded(item, f"{path}[{i}]") for i, item in enumerate(value)]
    raise ArgumentError(path, f"{type(value).__name__} is not a JSON value")


def resource_from_arguments(arguments: Mapping[str, Any], argument: str | None, tool: str) -> str:
    """What the call acts on, for people: the value of the argument the workflow names for the
    tool (a list of strings joined with ", "), shortened to ``MAX_RESOURCE`` characters with a
    closing "…"; the tool's name when there is no such argument or it holds no text."""
    value = arguments.get(argument) if argument is not None else None
    if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
        value = ", ".join(value)
    if not isinstance(value, str) or not value.strip():
        return tool
    return value if len(value) <= MAX_RESOURCE else value[: MAX_RESOURCE - 1] + "…"
