"""RFC 9457 problem details for every error, and the edge where domain errors become HTTP."""

from __future__ import annotations

import logging
import re
from typing import Any

import orjson
import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import Message, Receive

from gateway.db.migrations import schema_fault
from gateway.errors import GatewayError, InvalidInput, Unauthenticated, status_of
from gateway.identity import authenticate

__all__ = ["install_problem_handlers", "problem", "replaying"]


def replaying(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the app a body already read, whole, then defers to the
    original (for the disconnect message)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


PROBLEM_JSON = "application/problem+json"
log = logging.getLogger("mandate")
# How SQLite and PostgreSQL say that a table does not exist.
_MISSING_TABLE = re.compile(r'no such table: (\S+)|relation "([^"]+)" does not exist')


def problem(
    status: int,
    title: str,
    detail: str | None = None,
    *,
    errors: list[dict[str, str]] | None = None,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """A problem-details response."""
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status}
    if detail is not None:
        body["detail"] = detail
    if instance is not None:
        body["instance"] = instance
    if errors is not None:
        body["errors"] = errors
    return Response(orjson.dumps(body), status, headers=headers, media_type=PROBLEM_JSON)


def _field(loc: tuple[int | str, ...]) -> str:
    parts = list(loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc)
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or str(loc[0] if loc else "body")


def install_problem_handlers(app: FastAPI) -> None:
    """Make every error, expected or not, a problem-details response."""

    async def validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        # FastAPI reads the body before it runs dependencies; an anonymous caller must learn
        # nothing about what a valid body looks like.
        refused = _unauthenticated(request)
        if refused is not None:
            return await auth_error(request, refused)
        errors = [
            {"field": _field(tuple(e.get("loc", ()))), "message": str(e.get("msg", "invalid"))}
            for e in exc.errors()
        ]
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return problem(422, "invalid input", detail, errors=errors, instance=request.url.path)

    async def gateway_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, GatewayError)
        status = status_of(exc)
        errors = None
        if isinstance(exc, InvalidInput):
            errors = [{"field": field, "message": message} for field, message in exc.errors]
        if status == 503:
            _fail_closed(request, getattr(exc, "cause", "policy"), exc.detail)
        return problem(status, exc.title, exc.detail, errors=errors, instance=request.url.path)

    async def auth_error(request: Request, exc: Exception) -> Response:
        return problem(
            401,
            "unauthorized",
            str(exc),
            instance=request.url.path,
            headers={"WWW-Authenticate": "Bearer"},
        )

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 400:
            # Starlette's answer to a body it cannot decode; every other bad body is a 422.
            message = "not valid JSON in UTF-8"
            errors = [{"field": "body", "message": message}]
            return problem(422, "invalid input", f"body: {message}", errors=errors)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # Starlette names the methods of the first route that matched the path; a path
            # served by several routes (GET and DELETE, say) allows all of theirs.
            headers["Allow"] = ", ".join(_allowed(app, request.url.path)) or headers.get(
                "Allow", ""
            )
        return problem(
            exc.status_code,
            _title(exc.status_code),
            str(exc.detail),
            instance=request.url.path,
            headers=headers,
        )

    async def database_unavailable(request: Request, exc: Exception) -> Response:
        # The database went away (or its disk filled, or its tables) under a request that
        # needed it, be it only to check the token: nothing was decided or done. The driver's
        # own words, which name hosts and ports, go to the log, not to a caller who may not be
        # authenticated.
        assert isinstance(exc, sa.exc.DBAPIError)
        cause = exc.orig or exc
        missing = _MISSING_TABLE.search(str(cause))
        if missing is None and not (
            exc.connection_invalidated or isinstance(exc, sa.exc.OperationalError)
        ):
            return await unexpected(request, exc)  # a statement of ours that is wrong
        _fail_closed(request, "database", f"the database failed: {cause}")
        detail = (
            "the gateway's database is unavailable: nothing was decided or executed; "
            "try again later"
        )
        if missing is not None:
            # It asks the database what else is gone: off the event loop.
            fault = await run_in_threadpool(_schema_fault, request)
            found = fault or f"the database has no table {missing[1] or missing[2]}"
            detail = f"{found}; nothing was decided or executed"
        return problem(503, "database unavailable", detail, instance=request.url.path)

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s", request.url.path)
        return problem(500, "internal error", "the gateway failed; nothing was executed")

    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(GatewayError, gateway_error)
    app.add_exception_handler(Unauthenticated, auth_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    # Not only OperationalError: PostgreSQL's "relation does not exist" is a ProgrammingError
    # (the tables gone is no bug), a session the server ended (idle in a transaction too long)
    # an InternalError.
    app.add_exception_handler(sa.exc.DBAPIError, database_unavailable)
    app.add_exception_handler(Exception, unexpected)


def _allowed(app: FastAPI, path: str) -> list[str]:
    """Every method the API documents at ``path`` (by its OpenAPI path templates)."""
    table: list[tuple[re.Pattern[str], list[str]]] | None = getattr(app.state, "allowed", None)
    if table is None:
        table = [
            (
                re.compile("^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)) + "$"),
                sorted(m.upper() for m in operations),
            )
            for template, operations in app.openapi().get("paths", {}).items()
        ]
        app.state.allowed = table
    return sorted({m for pattern, methods in table if pattern.match(path) for m in methods})


def _unauthenticated(request: Request) -> Unauthenticated | None:
    """Why a request to an authenticated path has no valid token, or None if it has one."""
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is None or not request.url.path.startswith(("/v1/", "/readyz", "/metrics")):
        return None
    try:
        authenticate(runtime.tokens, request.headers.get("authorization"))
    except Unauthenticated as exc:
        return exc
    return None


def _fail_closed(request: Request, cause: str, why: str) -> None:
    """Every 503 is a fail-closed event: logged with its cause (a field of JSON logs) and
    counted (``mandate_fail_closed_total``) for operators."""
    path = request.url.path
    log.warning("failing closed on %s: %s", path, why, extra={"cause": cause, "path": path})
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is not None:
        runtime.metrics.failed_closed(cause)


def _schema_fault(request: Request) -> str | None:
    """Why the database's schema does not serve this gateway, if it can tell (see
    ``gateway.db.migrations.schema_fault``)."""
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is None:
        return None
    try:
        return schema_fault(runtime.engine)
    except Exception:
        return None


def _title(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase.lower()
    except ValueError:
        return "error"
