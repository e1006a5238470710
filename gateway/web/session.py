"""Sessions of the pages: the signed cookie, its row in ``gateway_ui_sessions``, signing in
and out, and the one request (``Visit``) that carries them.

Signing in with a token makes a row in ``gateway_ui_sessions`` and sets a cookie that holds the
session's random id (never the token), a CSRF nonce and the time of sign-in, signed with
HMAC-SHA256 under a key kept in ``<data dir>/ui-session-secret`` (mode 0600, made on first
use). The cookie is HttpOnly, SameSite=Lax (a link from a chat notification opens the page
signed in; no cross-site POST carries it) and Secure over HTTPS. Every request looks the
session and its token up in the database, so signing out (which deletes the row) ends the
session on every gateway process at once, and a copy of the old cookie signs in nowhere;
revoking the token ends all of its sessions. A row per session rather than a generation per
token that sign-out bumps: signing out of one browser leaves the person's others signed in,
and the one read a request makes (session joined with token) is the one it made before (the
token). The table holds the SHA-256 of each id, so what the database shows signs nobody in; a
row older than a session's 12 hours is deleted at the next sign-in. Every form carries the
session's CSRF nonce (``gateway.web.gate`` checks it).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from fastapi import Request
from fastapi.responses import RedirectResponse, Response

from gateway.db.tables import TOKENS, UI_SESSIONS
from gateway.identity import Identity
from gateway.server.runtime import Runtime
from ledger.database import WRITE
from ledger.entry import format_time

__all__ = [
    "SESSION_COOKIE",
    "SESSION_SECONDS",
    "Session",
    "Visit",
    "finish",
    "open_visit",
    "redirect",
    "session_secret",
    "sign_in",
    "sign_out",
]

SESSION_COOKIE = "mandate_session"
SESSION_SECONDS = 12 * 3600  # a working day; then sign in again
SECRET_FILE = "ui-session-secret"  # noqa: S105 (a file name, not a secret)
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def session_secret(data_dir: Path) -> bytes:
    """The key that signs session cookies, kept in ``<data dir>/ui-session-secret`` (0600).

    Made on first use: written to a private temporary file and linked into place, so processes
    that share the data dir and start at once all end up with the same key.
    """
    path = data_dir / SECRET_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        scratch = data_dir / f".{SECRET_FILE}.{secrets.token_hex(6)}"
        fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(secrets.token_hex(32).encode())
        with contextlib.suppress(FileExistsError):  # another process made it first
            os.link(scratch, path)
        scratch.unlink()
    secret = path.read_bytes().strip()
    if len(secret) < 32:
        raise RuntimeError(f"{path} holds fewer than 32 bytes; delete it to make a new key")
    return secret


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _flash(value: Any) -> tuple[str, str] | None:
    return None if value is None else (str(value[0]), str(value[1]))


@dataclass
class Session:
    """What the cookie holds: a CSRF nonce, and once signed in the session's id (its row in
    ``gateway_ui_sessions`` holds the SHA-256 of it)."""

    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    session_id: str | None = None
    issued: int = field(default_factory=lambda: int(time.time()))
    flash: tuple[str, str] | None = None
    changed: bool = True

    def encode(self, secret: bytes) -> str:
        """``payload.signature``, both base64url; the payload is JSON."""
        payload = {"c": self.csrf, "s": self.session_id, "i": self.issued, "f": self.flash}
        body = _b64(json.dumps(payload, separators=(",", ":")).encode())
        signature = hmac.new(secret, body.encode(), hashlib.sha256).digest()
        return f"{body}.{_b64(signature)}"

    @classmethod
    def decode(cls, value: str, secret: bytes, now: float) -> Session | None:
        """The session in a cookie, or None if it is forged, damaged or too old."""
        body, _, signature = value.partition(".")
        expected = _b64(hmac.new(secret, body.encode(), hashlib.sha256).digest())
        if not hmac.compare_digest(signature.encode(errors="replace"), expected.encode()):
            return None
        try:
            payload = json.loads(_unb64(body))
            session = cls(
                csrf=str(payload["c"]),
                session_id=None if payload["s"] is None else str(payload["s"]),
                issued=int(payload["i"]),
                flash=_flash(payload["f"]),
                changed=False,
            )
        except (ValueError, KeyError, TypeError, IndexError):
            return None
        if not 0 <= now - session.issued < SESSION_SECONDS:
            return None
        return session


@dataclass
class Visit:
    """One request to a page: the runtime, the session and who is signed in."""

    request: Request
    runtime: Runtime
    session: Session
    identity: Identity | None

    @property
    def base(self) -> str:
        """Where the pages are mounted (respects a proxy's root path)."""
        return f"{self.request.scope.get('root_path', '')}/ui"

    def say(self, kind: str, text: str) -> None:
        """Show ``text`` on the next page rendered (kinds: ok, error, info)."""
        self.session.flash = (kind, text)
        self.session.changed = True

    def start_over(self, session_id: str | None = None) -> None:
        """A new session (new CSRF nonce): at sign-in, sign-out and when a session ends."""
        self.session = Session(session_id=session_id)


def _secret(request: Request, runtime: Runtime) -> bytes:
    state = request.app.state
    secret = getattr(state, "ui_session_secret", None)
    if not isinstance(secret, bytes):
        secret = session_secret(runtime.settings.data_dir)
        state.ui_session_secret = secret
    return secret


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def sign_in(runtime: Runtime, token_id: str) -> str:
    """Start a session for the token: its row, and the id for the cookie. Rows of sessions
    too old to sign in go in the same transaction."""
    session_id = secrets.token_urlsafe(32)
    now = dt.datetime.now(dt.UTC)
    too_old = format_time(now - dt.timedelta(seconds=SESSION_SECONDS))
    # A write transaction from the start (BEGIN IMMEDIATE on SQLite), as the token book's.
    with runtime.engine.connect().execution_options(**{WRITE: True}) as conn, conn.begin():
        conn.execute(sa.delete(UI_SESSIONS).where(UI_SESSIONS.c.created_at < too_old))
        conn.execute(
            sa.insert(UI_SESSIONS).values(
                id=_digest(session_id), token_id=token_id, created_at=format_time(now)
            )
        )
    return session_id


def sign_out(runtime: Runtime, session_id: str) -> None:
    """End the session on the server: its cookie, or any copy of it, signs in no more."""
    with runtime.engine.connect().execution_options(**{WRITE: True}) as conn, conn.begin():
        conn.execute(sa.delete(UI_SESSIONS).where(UI_SESSIONS.c.id == _digest(session_id)))


def _session_identity(runtime: Runtime, session_id: str) -> tuple[Identity | None, str]:
    """Who a live session is signed in as; else None and why it is over."""
    too_old = format_time(dt.datetime.now(dt.UTC) - dt.timedelta(seconds=SESSION_SECONDS))
    with runtime.engine.connect() as conn:
        row = conn.execute(
            sa.select(TOKENS)
            .join(UI_SESSIONS, UI_SESSIONS.c.token_id == TOKENS.c.id)
            .where(UI_SESSIONS.c.id == _digest(session_id), UI_SESSIONS.c.created_at >= too_old)
        ).first()
    if row is None:
        return None, "Your session has ended; sign in again."
    if row.revoked_at is not None:
        return None, "Your token was revoked; sign in with another one."
    return Identity(row.id, row.name, row.role, row.workflow, row.owner), ""


def open_visit(request: Request, runtime: Runtime) -> Visit:
    """The request's session from its cookie (a fresh one if it has none, or a bad one), and
    who is signed in; a session that ended starts over, saying why."""
    secret = _secret(request, runtime)
    cookie = request.cookies.get(SESSION_COOKIE)
    session = None if cookie is None else Session.decode(cookie, secret, time.time())
    visit = Visit(request, runtime, session or Session(), None)
    if visit.session.session_id is not None:
        visit.identity, why = _session_identity(runtime, visit.session.session_id)
        if visit.identity is None:
            visit.start_over()
            visit.say("error", why)
    return visit


def finish(visit: Visit, response: Response) -> Response:
    """The response with the pages' security headers, and the cookie if the session changed."""
    for name, value in _SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if visit.session.changed:
        response.set_cookie(
            SESSION_COOKIE,
            visit.session.encode(_secret(visit.request, visit.runtime)),
            max_age=SESSION_SECONDS,
            path=visit.base,
            httponly=True,
            samesite="lax",
            secure=visit.request.url.scheme == "https",
        )
    return response


def redirect(visit: Visit, url: str) -> Response:
    """See Other to ``url``, the session's cookie with it."""
    return finish(visit, RedirectResponse(url, status_code=303))
