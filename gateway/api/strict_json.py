"""One strict parse of every JSON request body, at the edge, before pydantic looks at it.

What policy saw must be what the executor, the ledger and anyone re-reading the body get, and
parsers disagree on JSON's corners. So a body is refused, 422 naming the field, wherever in it:

- an object holds a key twice: Python's parser keeps the last, others keep the first, so an
  executor's copy could differ from what was decided;
- a number is not finite: ``NaN``, ``Infinity`` and ``-Infinity`` are not JSON, though Python
  reads them, and ``1e400`` is JSON but infinite as a double; the ledger would write them as
  null and the executor would receive null.

The parse replaces FastAPI's own, so a body is parsed once: ``StrictJSONRoute`` (the route
class of the API's routers) parses a route's body before FastAPI reads it and hands FastAPI the
result. Python's C scanner does the work, with hooks that raise at the first duplicate key or
non-finite number; as fast as the lenient parse it replaces (``bench/body_parse.py``). Only a
body refused that way is parsed a second time, leniently, to name every field at fault.

The errors go the way of pydantic's (``RequestValidationError``), so ``gateway.api.problems``
answers them as any invalid body: 422 to a caller with a valid token, 401 to any other.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import params
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

__all__ = ["BodyError", "StrictJSONRoute", "parse_body"]

Path = tuple[str | int, ...]
_MAX_ERRORS = 10  # named in one answer; a body of a thousand duplicates needs no more to be fixed


class BodyError(ValueError):
    """A body that is not strict JSON: where (a path of keys and indexes; empty for the whole
    body) and what, for each fault found."""

    def __init__(self, errors: list[tuple[Path, str]]) -> None:
        super().__init__("; ".join(message for _, message in errors))
        self.errors = errors

    def validation_error(self) -> RequestValidationError:
        """The same faults as FastAPI reports an invalid body: one error a field."""
        return RequestValidationError(
            [
                {"type": "json_invalid", "loc": ("body", *path), "msg": message, "input": None}
                for path, message in self.errors
            ]
        )


class _Refused(Exception):
    """Raised by the strict hooks; the lenient parse then finds where."""


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _Refused
    return obj


def _no_constant(_name: str) -> Any:
    raise _Refused


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _Refused
    return value


_STRICT = json.JSONDecoder(
    object_pairs_hook=_unique, parse_constant=_no_constant, parse_float=_finite
)


class _Object(dict[str, Any]):
    """An object as the lenient parse keeps it: with the keys it held more than once."""

    duplicates: list[str]


class _NonFinite:
    """A number that is not finite, as it was written."""

    def __init__(self, text: str) -> None:
        self.text = text


def _noting_duplicates(pairs: list[tuple[str, Any]]) -> _Object:
    obj = _Object(pairs)
    seen: set[str] = set()
    obj.duplicates = []
    for key, _ in pairs:
        if key in seen and key not in obj.duplicates:
            obj.duplicates.append(key)
        seen.add(key)
    return obj


def _noting_float(text: str) -> float | _NonFinite:
    value = float(text)
    return _NonFinite(text) if math.isinf(value) else value


_LENIENT = json.JSONDecoder(
    object_pairs_hook=_noting_duplicates, parse_constant=_NonFinite, parse_float=_noting_float
)


def parse_body(body: bytes) -> Any:
    """The JSON value of ``body`` (UTF-8), or ``BodyError`` if it is not JSON, holds a key twice
    in one object or a number that is not finite."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BodyError([((), "not valid JSON in UTF-8")]) from None
    try:
        return _STRICT.decode(text)
    except _Refused:
        pass
    except (RecursionError, ValueError) as exc:
        raise _unparsable(exc) from None
    # The strict parse stopped at the first fault; what follows it may be deeper, or no JSON.
    try:
        found = _faults(_LENIENT.decode(text))
    except (RecursionError, ValueError) as exc:
        raise _unparsable(exc) from None
    raise BodyError(found)


def _unparsable(exc: RecursionError | ValueError) -> BodyError:
    if isinstance(exc, RecursionError):
        return BodyError([((), "JSON nested too deeply")])
    # Not JSON; or an integer of more digits than Python converts.
    return BodyError([((), f"not valid JSON: {exc}")])


def _faults(value: Any) -> list[tuple[Path, str]]:
    """Every duplicate key and non-finite number in a leniently parsed value, in the order of
    the body (walked without recursion: the parse took the depth, the walk need not)."""
    found: list[tuple[Path, str]] = []
    stack: list[tuple[Path, Any]] = [((), value)]
    while stack and len(found) < _MAX_ERRORS:
        path, item = stack.pop()
        if isinstance(item, _NonFinite):
            found.append((path, f"{item.text} is not a finite number; JSON numbers are finite"))
        elif isinstance(item, _Object):
            found.extend(
                ((*path, key), "the key appears more than once in its object; send it once")
                for key in item.duplicates
            )
            stack.extend(((*path, key), child) for key, child in reversed(item.items()))
        elif isinstance(item, list):
            stack.extend(
                ((*path, index), child) for index, child in reversed(list(enumerate(item)))
            )
    return found[:_MAX_ERRORS]


class _StrictRequest(Request):
    """A request whose ``json()`` is the strict parse (done once, by ``StrictJSONRoute``)."""

    parsed: Any = None
    has_parsed = False

    async def json(self) -> Any:
        if not self.has_parsed:
            # FastAPI asks only for a body the route class parsed already; were it to ask for
            # another, a refusal here is FastAPI's 400, which the problem handlers make a 422.
            self.parsed = parse_body(await self.body())
            self.has_parsed = True
        return self.parsed


class StrictJSONRoute(APIRoute):
    """The route class of the API's routers: a route that takes a JSON body gets it parsed by
    ``parse_body``, and a refused body never reaches pydantic, the dependencies or the route."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()
        if self.body_field is None or isinstance(self.body_field.field_info, params.Form):
            return handle

        async def strict(request: Request) -> Response:
            request = _StrictRequest(request.scope, request.receive)
            body = await request.body()
            if body:  # FastAPI leaves an empty body unparsed: "field required"
                try:
                    request.parsed = parse_body(body)
                except BodyError as exc:
                    raise exc.validation_error() from None
                request.has_parsed = True
            return await handle(request)

        return strict
