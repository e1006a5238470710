"""A hot endpoint's common request, taken without FastAPI's dependency machinery.

``DirectRoute`` is ``StrictJSONRoute`` for an endpoint called as ``endpoint(body, runtime,
identity)`` (a JSON body model, ``Rt``, ``Caller``): a request with no query string, a JSON body
the model takes and a bearer token that authenticates and may call the route goes straight to
the endpoint, the body parsed once (strictly) and validated once. Any other request takes
FastAPI's whole way, as before, so every refusal (401, 403, 422 naming the field) is answered
exactly as FastAPI answers it; the endpoint, and what it raises, is the same either way.
Solving the dependencies cost more than the rest of the HTTP edge together (bench
gateway_http).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine
from typing import Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from gateway.api.access import ACCESS, route_path
from gateway.api.limits import IDENTITY
from gateway.api.problems import replaying
from gateway.api.strict_json import StrictJSONRoute, parse_body
from gateway.identity import authenticate

__all__ = ["DirectRoute"]

_JSON = b"application/json"


class DirectRoute(StrictJSONRoute):
    """See the module: the common request straight to the endpoint, any other FastAPI's way."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        full = super().get_route_handler()
        assert self.body_field is not None, "a DirectRoute takes a JSON body"
        model = self.body_field.field_info.annotation
        assert isinstance(model, type)
        assert issubclass(model, BaseModel)
        endpoint = self.endpoint
        assert inspect.iscoroutinefunction(endpoint), "a DirectRoute's endpoint is async"
        # Called as endpoint(body, runtime, identity): a parameter added later (a dependency)
        # would be skipped on the direct way, so it must fail here, at start-up.
        parameters = inspect.signature(endpoint).parameters
        assert len(parameters) == 3, "a DirectRoute's endpoint takes (body, Rt, Caller), no more"

        async def direct(request: Request) -> Response:
            scope = request.scope
            runtime = getattr(request.app.state, "runtime", None)
            header = content_type = None
            for name, value in scope["headers"]:  # the first of each, as Starlette reads them
                if name == b"authorization" and header is None:
                    header = value
                elif name == b"content-type" and content_type is None:
                    content_type = value
            if scope["query_string"] or content_type != _JSON or header is None or runtime is None:
                return await full(request)
            body = await request.body()
            try:
                identity = scope.get(IDENTITY) or authenticate(
                    runtime.tokens, header.decode("latin-1")
                )
                ACCESS.check(identity, request.method, route_path(request))
                parsed = model.model_validate(parse_body(body))
            except Exception:  # refused there (or failing), as FastAPI would have it
                return await full(Request(scope, replaying(body, request.receive)))
            response: Response = await endpoint(parsed, runtime, identity)
            return response

        return direct
