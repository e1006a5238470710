"""A hot endpoint's common request, answered in front of FastAPI's routing.

A route made with ``DirectRoute`` (an endpoint called as ``endpoint(body, runtime, identity)``:
a JSON body model, ``Rt``, ``Caller``, and no path parameters) has its common request answered
by ``answer_directly``, which ``gateway.api.limits.Limits`` calls once it has read the body and
authenticated the caller: a request with no query string, a JSON body the model takes and a
caller who may call the route goes straight to the endpoint, the body parsed once (strictly)
and validated once, without the router's walk over every route, FastAPI's dependency solving
and the middleware between. What the endpoint raises is answered by the app's own exception
handlers, as the router's way would answer it. Any other request takes FastAPI's whole way, so
every refusal (401, 403, 422 naming the field) is answered exactly as FastAPI answers it.
The layers skipped cost more than the rest of the HTTP edge together (bench gateway_http).
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from starlette._exception_handler import wrap_app_handling_exceptions
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.api.access import ACCESS
from gateway.api.strict_json import StrictJSONRoute, parse_body
from gateway.identity import Identity

__all__ = ["DirectRoute", "answer_directly"]

_JSON = b"application/json"


class DirectRoute(StrictJSONRoute):
    """A route whose common request ``answer_directly`` takes; FastAPI's way for the rest.
    Its shape is checked here, at start-up: a parameter added later (a dependency) would be
    skipped on the direct way."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        assert "{" not in path, "a DirectRoute has no path parameters"
        assert inspect.iscoroutinefunction(endpoint), "a DirectRoute's endpoint is async"
        parameters = inspect.signature(endpoint).parameters
        assert len(parameters) == 3, "a DirectRoute's endpoint takes (body, Rt, Caller), no more"
        assert self.body_field is not None, "a DirectRoute takes a JSON body"
        model = self.body_field.field_info.annotation
        assert isinstance(model, type)
        assert issubclass(model, BaseModel)
        self.direct_model: type[BaseModel] = model


@dataclass(frozen=True, slots=True)
class _Direct:
    """One direct route: what its body is parsed as, who is called, what access rule holds."""

    model: type[BaseModel]
    endpoint: Callable[[BaseModel, Any, Identity], Awaitable[Response]]
    path: str


@dataclass(frozen=True, slots=True)
class _Index:
    """An app's direct routes by (method, path), and the exception handlers its router's way
    would answer with (the 500 handler stays the outermost middleware's, as before)."""

    routes: Mapping[tuple[str, str], _Direct]
    handlers: tuple[dict[Any, Any], dict[int, Any]]


_INDEXES: weakref.WeakKeyDictionary[FastAPI, _Index] = weakref.WeakKeyDictionary()


def _index(app: FastAPI) -> _Index:
    index = _INDEXES.get(app)
    if index is None:
        routes = {
            (method, path): _Direct(route.direct_model, route.endpoint, path)
            for path, route in _routes(app)
            for method in route.methods or ()
        }
        handlers: dict[Any, Any] = {}
        statuses: dict[int, Any] = {}
        for key, handler in app.exception_handlers.items():
            if key in (500, Exception):
                continue
            if isinstance(key, int):
                statuses[key] = handler
            else:
                handlers[key] = handler
        index = _INDEXES[app] = _Index(routes, (handlers, statuses))
    return index


def _routes(app: FastAPI) -> Iterator[tuple[str, DirectRoute]]:
    """The app's direct routes with their full paths, those of included routers too (FastAPI
    keeps an included router's routes as it made them, with the prefix beside them)."""
    for route in app.router.routes:
        if isinstance(route, DirectRoute):
            yield route.path, route
        contexts = getattr(route, "effective_route_contexts", None)
        if contexts is not None:
            for context in contexts():
                if isinstance(context.original_route, DirectRoute):
                    yield context.path, context.original_route


async def answer_directly(
    scope: Scope, receive: Receive, send: Send, identity: Identity, body: bytes
) -> bool:
    """Answer a direct route's common request (see the module); False when the request is
    not one, and must take FastAPI's way (nothing was answered, nothing read)."""
    app = scope.get("app")
    if not isinstance(app, FastAPI) or scope["query_string"]:
        return False
    runtime = getattr(app.state, "runtime", None)
    index = _index(app)
    direct = index.routes.get((scope["method"], scope["path"]))
    if direct is None or runtime is None:
        return False
    content_type = None
    for name, value in scope["headers"]:  # the first, as Starlette reads it
        if name == b"content-type":
            content_type = value
            break
    if content_type != _JSON:
        return False
    try:
        ACCESS.check(identity, scope["method"], direct.path)
        parsed = direct.model.model_validate(parse_body(body))
    except Exception:  # refused there (or failing): FastAPI's way answers it
        return False

    async def call(scope: Scope, receive: Receive, send: Send) -> None:
        response = await direct.endpoint(parsed, runtime, identity)
        await response(scope, receive, send)

    scope["starlette.exception_handlers"] = index.handlers
    await wrap_app_handling_exceptions(call, Request(scope, receive, send))(scope, receive, send)
    return True
