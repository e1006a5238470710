"""The approvers' inbox: server-rendered pages under ``/ui/``.

The pages call the same domain objects as the API: ``runtime.approvals`` lists, shows and
decides approvals, and the action with its ledger timeline comes from
``gateway.routes.actions.show``; the audit queue lists and settles audits through
``runtime.audits``, and the ledger's status page reads ``runtime.ledger``. Who may see and
vote or audit, separation of duties, the reason a rejection or an incorrect finding needs, expiry
and conflicts are decided there; this module turns the answers (and the domain errors) into
HTML with the same HTTP status the API would give.

Sessions: signing in with a token makes a row in ``gateway_ui_sessions`` and sets a cookie
that holds the session's random id (never the token), a CSRF nonce and the time of sign-in,
signed with HMAC-SHA256 under a key kept in ``<data dir>/ui-session-secret`` (mode 0600, made
on first use). The cookie is HttpOnly, SameSite=Lax (a link from a chat notification opens the
page signed in; no cross-site POST carries it) and Secure over HTTPS. Every request looks the
session and its token up in the database, so signing out (which deletes the row) ends the
session on every gateway process at once, and a copy of the old cookie signs in nowhere;
revoking the token ends all of its sessions. A row per session rather than a generation per
token that sign-out bumps: signing out of one browser leaves the person's others signed in,
and the one read a request makes (session joined with token) is the one it made before (the
token). The table holds the SHA-256 of each id, so what the database shows signs nobody in; a
row older than a session's 12 hours is deleted at the next sign-in. Every form carries the
session's CSRF nonce; a POST without the right one is refused with 403.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import pydantic
import sqlalchemy as sa
from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from markupsafe import Markup, escape

from gateway.access import ACCESS, route_path
from gateway.autonomy import SERIES_DAYS
from gateway.charts import trend_chart
from gateway.errors import Conflict, Forbidden, GatewayError, InvalidInput, NotFound
from gateway.identity import Identity
from gateway.models import TOKENS, UI_SESSIONS
from gateway.pipeline import LEVEL_NAMES
from gateway.routes.actions import show as show_action
from gateway.routes.deps import Rt
from gateway.runtime import Runtime
from gateway.schemas import ActionView, ApprovalView, FindingRequest, LevelRequest, VoteRequest
from ledger.database import WRITE
from ledger.entry import format_time

__all__ = ["SESSION_COOKIE", "router", "session_secret", "static_files"]

HERE = Path(__file__).parent
SESSION_COOKIE = "mandate_session"
SESSION_SECONDS = 12 * 3600  # a working day; then sign in again
SECRET_FILE = "ui-session-secret"  # noqa: S105 (a file name, not a secret)
STATUSES = ("pending", "approved", "rejected", "expired", "superseded", "withdrawn")
FILTERS = (*STATUSES, "all")
_STATUS_OF: tuple[tuple[type[GatewayError], int], ...] = (
    (InvalidInput, 422),
    (Forbidden, 403),
    (NotFound, 404),
    (Conflict, 409),
)
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

router = APIRouter(prefix="/ui", include_in_schema=False)


def static_files() -> StaticFiles:
    """The stylesheet, served at ``/ui/static``."""
    return StaticFiles(directory=HERE / "static")


# -- the session cookie ----------------------------------------------------------------------


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


def _sign_in(runtime: Runtime, token_id: str) -> str:
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


def _sign_out(runtime: Runtime, session_id: str) -> None:
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


def _visit(request: Request, runtime: Runtime) -> Visit:
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


def _finish(visit: Visit, response: Response) -> Response:
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


def _redirect(visit: Visit, url: str) -> Response:
    return _finish(visit, RedirectResponse(url, status_code=303))


def _to_sign_in(visit: Visit) -> Response:
    here = visit.request.url.path
    query = visit.request.url.query
    target = f"{here}?{query}" if query else here
    return _redirect(visit, f"{visit.base}/login?next={quote(target, safe='/')}")


def _safe_next(visit: Visit, target: str) -> str:
    """Only a page of ours: never another site (``//evil``), never a scheme."""
    base = visit.base
    if target.startswith(f"{base}/") and "//" not in target and "\\" not in target:
        return target
    return f"{base}/"


def _first_error(exc: pydantic.ValidationError, field: str) -> tuple[str, str]:
    """The field of a form's first invalid value (``field`` if it names none), and the line
    the page shows for it."""
    first = exc.errors()[0]
    where = str(first["loc"][0]) if first["loc"] else field
    return where, f"{where}: {first['msg']}"


def _gate(visit: Visit, csrf: str | None = None) -> Identity | Response:
    """Who is signed in, if they may use this page; else what the page answers instead: sign
    in first; the 403 page for a role the page is not for; and, for a form (``csrf`` given),
    the refusal of a form that does not carry this session's CSRF value."""
    if visit.identity is None:
        return _to_sign_in(visit)
    if (denied := _role_refused(visit)) is not None:
        return denied
    refused = None if csrf is None else _csrf_refused(visit, csrf)
    return visit.identity if refused is None else refused


def _role_refused(visit: Visit) -> Response | None:
    """The 403 page, naming the roles that may, when the signed-in role may not use this page
    (``gateway.access``, the same rules as the API's)."""
    assert visit.identity is not None
    try:
        ACCESS.check(visit.identity, visit.request.method, route_path(visit.request))
    except Forbidden as exc:
        return _problem(visit, 403, exc.title, exc.detail)
    return None


def _csrf_refused(visit: Visit, given: str) -> Response | None:
    if given and hmac.compare_digest(given.encode(errors="replace"), visit.session.csrf.encode()):
        return None
    return _problem(
        visit,
        403,
        "forbidden",
        "The form's CSRF token does not match your session (the page may be older than your "
        "session). Reload the page and try again.",
    )


# -- rendering -------------------------------------------------------------------------------

templates = Jinja2Templates(directory=HERE / "templates")
_CSS_VERSION = hashlib.sha256((HERE / "static" / "ui.css").read_bytes()).hexdigest()[:12]
_IDS = re.compile(r"\b(apr|act)_[0-9a-f]{8,40}\b")


def _parse(stamp: str) -> dt.datetime:
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def _when(stamp: str | None) -> str:
    """``2026-11-25 14:12:57`` from an entry time (UTC)."""
    if not stamp:
        return "—"
    return _parse(stamp).strftime("%Y-%m-%d %H:%M:%S")


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


def _linkify(text: str, base: str) -> Markup:
    """Escape ``text`` and link the approval ids in it to their pages."""
    out, last = [], 0
    for match in _IDS.finditer(text):
        out.append(escape(text[last : match.start()]))
        ident = match.group(0)
        if ident.startswith("apr_"):
            out.append(
                Markup('<a class="mono" href="{}/approvals/{}">{}</a>').format(base, ident, ident)
            )
        else:
            out.append(Markup('<span class="mono">{}</span>').format(ident))
        last = match.end()
    out.append(escape(text[last:]))
    return Markup("").join(out)


templates.env.filters["when"] = _when
templates.env.filters["pretty"] = _pretty
templates.env.filters["linkify"] = _linkify
templates.env.filters["pct"] = lambda bp: f"{bp // 100}.{bp % 100:02d} %"
# The nav shows a section only to roles whose rule lets them in (the same rules as the pages').
templates.env.globals["allows"] = ACCESS.allows


def _page(visit: Visit, name: str, context: dict[str, Any], status_code: int = 200) -> Response:
    flash = visit.session.flash
    if flash is not None:
        visit.session.flash = None
        visit.session.changed = True
    merged = {
        "identity": visit.identity,
        "csrf": visit.session.csrf,
        "flash": None if flash is None else {"kind": flash[0], "text": flash[1]},
        "base": visit.base,
        "static": f"{visit.base}/static",
        "css_version": _CSS_VERSION,
        "section": None,
    } | context
    response = templates.TemplateResponse(visit.request, name, merged, status_code=status_code)
    return _finish(visit, response)


def _problem(visit: Visit, status: int, title: str, detail: str) -> Response:
    """An error page: the problem's status, title and detail, as the API would say them."""
    context = {"status": status, "title": title, "detail": detail}
    return _page(visit, "error.html", context, status)


def _status_of(exc: GatewayError) -> int:
    return next((code for kind, code in _STATUS_OF if isinstance(exc, kind)), 500)


def _time_left(expires_at: str, now: dt.datetime) -> tuple[str, str]:
    """How long until ``expires_at``, and a tone: expired, urgent (< 1 h), soon (< 4 h)."""
    seconds = int((_parse(expires_at) - now).total_seconds())
    if seconds <= 0:
        return "expired", "expired"
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        text = f"{days} d {hours} h"
    elif hours:
        text = f"{hours} h {minutes:02d} m"
    else:
        text = f"{minutes} m" if minutes else "< 1 m"
    tone = "urgent" if seconds < 3600 else "soon" if seconds < 4 * 3600 else ""
    return text, tone


def _age(stamp: str, now: dt.datetime) -> str:
    """How long ago: ``just now``, ``5 m ago``, ``3 h ago``, ``2 d ago``."""
    seconds = int((now - _parse(stamp)).total_seconds())
    if seconds < 60:
        return "just now"
    if seconds < 3600:
        return f"{seconds // 60} m ago"
    if seconds < 86400:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} d ago"


def _confidence(value: str | None) -> str:
    if value is None:
        return "—"
    try:
        return f"{float(value):.2f}"
    except ValueError:
        return value


def _row(view: ApprovalView, now: dt.datetime) -> dict[str, Any]:
    """An approval as a page shows it: the status to show, and the time left with its tone."""
    shown = view.status
    if view.status == "pending":
        left, tone = _time_left(view.expires_at, now)
        if tone == "expired":
            shown = "expired"  # past its time; the sweeper (or the next vote) closes it
    elif view.status == "expired":
        left, tone = "expired", "expired"
    else:
        left, tone = "closed", "closed"
    return {
        "view": view,
        "status": shown,
        "left": left,
        "tone": tone,
        "confidence": _confidence(view.confidence),
        "age": _age(view.created_at, now),
        "open": shown == "pending",
    }


# -- sign in and out -------------------------------------------------------------------------


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, runtime: Rt, next: Annotated[str, Query()] = "/ui/") -> Response:
    """The sign-in form; a signed-in visitor goes straight on."""
    visit = _visit(request, runtime)
    if visit.identity is not None:
        return _redirect(visit, _safe_next(visit, next))
    return _page(visit, "login.html", {"next": _safe_next(visit, next), "error": None})


@router.post("/login", response_class=HTMLResponse)
def login(
    request: Request,
    runtime: Rt,
    token: Annotated[str, Form()] = "",
    csrf: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/ui/",
) -> Response:
    """Check the token; on success, a fresh session holding its id."""
    visit = _visit(request, runtime)
    refused = _csrf_refused(visit, csrf)
    if refused is not None:
        return refused
    target = _safe_next(visit, next)
    identity = runtime.tokens.lookup(token.strip()) if token.strip() else None
    if identity is None:
        error = "That token is unknown or revoked." if token.strip() else "Paste a token."
        return _page(visit, "login.html", {"next": target, "error": error}, 401)
    visit.start_over(_sign_in(runtime, identity.token_id))
    visit.say("ok", f"Signed in as {identity.name} ({identity.role}).")
    return _redirect(visit, target)


@router.post("/logout", response_class=HTMLResponse)
def logout(request: Request, runtime: Rt, csrf: Annotated[str, Form()] = "") -> Response:
    """End the session on the server, and replace the cookie by an anonymous one."""
    visit = _visit(request, runtime)
    refused = _csrf_refused(visit, csrf)
    if refused is not None:
        return refused
    if visit.session.session_id is not None:
        _sign_out(runtime, visit.session.session_id)
    visit.start_over()
    visit.say("info", "Signed out.")
    return _redirect(visit, f"{visit.base}/login")


# -- the inbox -------------------------------------------------------------------------------


@router.get("/", response_class=HTMLResponse)
def inbox(request: Request, runtime: Rt, status: Annotated[str, Query()] = "pending") -> Response:
    """Approvals this person may decide, newest first, filtered by status."""
    visit = _visit(request, runtime)
    identity = _gate(visit)
    if isinstance(identity, Response):
        return identity
    if status not in FILTERS:
        return _problem(
            visit, 422, "invalid input", f"status: one of {', '.join(FILTERS)}, not {status!r}"
        )
    views = runtime.approvals.list(identity, None if status == "all" else status)
    now = runtime.decider.clock()
    context = {
        "section": "inbox",
        "rows": [_row(view, now) for view in views],
        "status": status,
        "filters": FILTERS,
        "now": now.strftime("%Y-%m-%d %H:%M"),
    }
    return _page(visit, "inbox.html", context)


# -- one approval ----------------------------------------------------------------------------


def _timeline(action: ActionView) -> list[dict[str, Any]]:
    """The action's ledger entries, each with who did it and a line saying what happened."""
    lines = []
    for item in action.timeline:
        kind, body = item["kind"], item.get("body") or {}
        who, text = "mandate", kind
        if kind == "proposal":
            proposal = body.get("proposal") or {}
            who = (body.get("executor") or {}).get("name", "?")
            text = f"proposed {proposal.get('action_type')} on {proposal.get('resource')}"
        elif kind == "decision":
            trace = body.get("trace") or {}
            text = f"verdict {body.get('verdict')}; recommends {trace.get('recommendation')}"
            if body.get("reevaluated"):
                text = f"re-evaluated ({body['reevaluated'].get('because')}): {text}"
            if body.get("approval"):
                held = body["approval"]
                text += f"; awaits approval {held.get('id')} (quorum {held.get('quorum')})"
        elif kind in ("approval", "rejection"):
            who = (body.get("voter") or {}).get("name", "?")
            verb = "approved" if kind == "approval" else "rejected"
            text = f"{verb}: {body['reason']}" if body.get("reason") else verb
        elif kind == "expiry":
            text = f"approval {body.get('approval_id')} expired: no quorum in time"
        elif kind == "withdrawal":
            who = (body.get("executor") or {}).get("name", "?")
            text = f"withdrawn: {body.get('reason')}"
        elif kind == "execution":
            attempt, adapter = body.get("attempt"), body.get("adapter")
            if body.get("result") == "retry":
                text = (
                    f"attempt {attempt} failed ({body.get('error')}); "
                    f"next at {_when(body.get('next_attempt_at'))}"
                )
            else:
                target = body.get("target")
                text = f"dispatched via {adapter}" + (f" to {target}" if target else "")
                text += f" (attempt {attempt})"
                if adapter == "callback":
                    text += "; the executor carries it out and reports the outcome"
        elif kind == "outcome":
            detail = body.get("detail")
            text = f"outcome: {body.get('status')}"
            if isinstance(detail, dict) and detail.get("detail"):
                text += f" ({detail['detail']})"
            elif detail:
                text += f" ({json.dumps(detail, sort_keys=True)})"
        lines.append(
            {"seq": item["seq"], "time": item["time"], "kind": kind, "who": who, "text": text}
        )
    return lines


def _detail(
    visit: Visit,
    approval_id: str,
    *,
    status_code: int = 200,
    error: str | None = None,
    reason_error: str | None = None,
    reason: str = "",
) -> Response:
    """The detail page; ``error`` says why the last vote was not counted."""
    assert visit.identity is not None
    runtime = visit.runtime
    try:
        view = runtime.approvals.get(visit.identity, approval_id)
        action = show_action(view.action_id, runtime, visit.identity)
    except GatewayError as exc:
        status = _status_of(exc)
        return _problem(visit, status, exc.title, exc.detail)
    now = runtime.decider.clock()
    row = _row(view, now)
    proposal_entry = next((t for t in action.timeline if t["kind"] == "proposal"), None)
    voted = next((v for v in view.votes if v.voter == visit.identity.name), None)
    may_vote = runtime.approvals.may_vote(visit.identity, view.workflow, view.action_type)
    context = {
        "section": "inbox",
        "row": row,
        "view": view,
        "action": action,
        "trace": action.decision.trace,
        "ledger": action.decision.ledger,
        "proposal": None if proposal_entry is None else proposal_entry["body"].get("proposal"),
        "proposer": None if proposal_entry is None else proposal_entry["body"].get("executor"),
        "timeline": _timeline(action),
        "voted": voted,
        "can_vote": row["open"] and may_vote and voted is None,
        "may_vote": may_vote,
        "error": error,
        "reason_error": reason_error,
        "reason": reason,
    }
    return _page(visit, "detail.html", context, status_code)


@router.get("/approvals/{approval_id}", response_class=HTMLResponse)
def approval_page(approval_id: str, request: Request, runtime: Rt) -> Response:
    """One approval: the proposal, the trace, the votes, the timeline, and the vote form."""
    visit = _visit(request, runtime)
    identity = _gate(visit)
    if isinstance(identity, Response):
        return identity
    return _detail(visit, approval_id)


@router.post("/approvals/{approval_id}", response_class=HTMLResponse)
async def vote(
    approval_id: str,
    request: Request,
    runtime: Rt,
    decision: Annotated[str, Form()] = "",
    reason: Annotated[str, Form()] = "",
    csrf: Annotated[str, Form()] = "",
) -> Response:
    """Approve or reject through ``Approvals.decide``; then back to the page, with a message."""
    visit = _visit(request, runtime)
    identity = _gate(visit, csrf)
    if isinstance(identity, Response):
        return identity
    try:
        request_ = VoteRequest.model_validate({"decision": decision, "reason": reason})
    except pydantic.ValidationError as exc:
        where, message = _first_error(exc, "decision")
        return _detail(
            visit,
            approval_id,
            status_code=422,
            error=None if where == "reason" else message,
            reason_error=message if where == "reason" else None,
            reason=reason,
        )
    try:
        view = await runtime.approvals.decide(identity, approval_id, request_)
    except InvalidInput as exc:
        fields = dict(exc.errors)
        return _detail(
            visit,
            approval_id,
            status_code=422,
            error=None if "reason" in fields else exc.detail,
            reason_error=fields.get("reason"),
            reason=reason,
        )
    except GatewayError as exc:
        return _detail(
            visit, approval_id, status_code=_status_of(exc), error=exc.detail, reason=reason
        )
    if view.status == "approved":
        visit.say("ok", f"Approved: quorum of {view.quorum} reached; the action is released.")
    elif view.status == "rejected":
        visit.say("ok", "Rejected: the action will not execute.")
    else:
        visit.say("ok", f"Your approval is recorded: {view.approvals} of {view.quorum}.")
    return _redirect(visit, f"{visit.base}/approvals/{approval_id}")


# -- autonomy --------------------------------------------------------------------------------


def _anchor(workflow: str, case_type: str) -> str:
    return f"case-{workflow}-{case_type}".replace(".", "-")


def _autonomy(visit: Visit, *, status_code: int = 200, error: str | None = None) -> Response:
    """Every case type: level, figures, chart, next level, pending promotion, and (for
    governors) the forms that change a level."""
    assert visit.identity is not None
    runtime = visit.runtime
    governance = runtime.governance
    try:
        views = governance.overview(visit.identity)
    except GatewayError as exc:
        return _problem(visit, _status_of(exc), exc.title, exc.detail)
    today = runtime.decider.clock().date()
    workflows: dict[str, list[dict[str, Any]]] = {}
    for view in views:
        history = governance.history(view.workflow, view.case_type, limit=20)
        days = min(90, max(view.window.days, SERIES_DAYS))
        chart = trend_chart(governance.series(view.workflow, view.case_type), history, today, days)
        workflows.setdefault(view.workflow, []).append(
            {
                "view": view,
                "chart": chart,
                "history": history[:5],
                "anchor": _anchor(view.workflow, view.case_type),
                "may_govern": governance.may_govern(visit.identity, view.workflow, view.case_type),
            }
        )
    pending = sum(1 for v in views if v.pending_promotion is not None)
    context = {
        "section": "autonomy",
        "workflows": workflows,
        "pending": pending,
        "levels": LEVEL_NAMES,
        "error": error,
    }
    return _page(visit, "autonomy.html", context, status_code)


@router.get("/autonomy", response_class=HTMLResponse)
def autonomy_page(request: Request, runtime: Rt) -> Response:
    """The autonomy levels: what each case type earned, and promotions waiting for governors."""
    visit = _visit(request, runtime)
    identity = _gate(visit)
    if isinstance(identity, Response):
        return identity
    return _autonomy(visit)


@router.post("/autonomy/promotions/{promotion_id}", response_class=HTMLResponse)
async def promotion_vote(
    promotion_id: str,
    request: Request,
    runtime: Rt,
    decision: Annotated[str, Form()] = "",
    reason: Annotated[str, Form()] = "",
    csrf: Annotated[str, Form()] = "",
) -> Response:
    """A governor approves or rejects a promotion through ``Governance.decide``."""
    visit = _visit(request, runtime)
    identity = _gate(visit, csrf)
    if isinstance(identity, Response):
        return identity
    try:
        vote_ = VoteRequest.model_validate({"decision": decision, "reason": reason})
        view = await runtime.governance.decide(identity, promotion_id, vote_)
    except pydantic.ValidationError as exc:
        return _autonomy(visit, status_code=422, error=_first_error(exc, "decision")[1])
    except GatewayError as exc:
        return _autonomy(visit, status_code=_status_of(exc), error=exc.detail)
    where = f"{view.workflow} {view.case_type}"
    if view.status == "approved":
        visit.say("ok", f"Promoted: {where} is at level {view.to_level} now.")
    elif view.status == "rejected":
        visit.say("ok", f"Promotion of {where} rejected.")
    else:
        visit.say("ok", f"Your approval is recorded: {view.approvals} of {view.quorum}.")
    anchor = _anchor(view.workflow, view.case_type)
    return _redirect(visit, f"{visit.base}/autonomy#{anchor}")


@router.post("/autonomy/{workflow}/{case_type}", response_class=HTMLResponse)
async def level_set(
    workflow: str,
    case_type: str,
    request: Request,
    runtime: Rt,
    level: Annotated[str, Form()] = "",
    reason: Annotated[str, Form()] = "",
    csrf: Annotated[str, Form()] = "",
) -> Response:
    """A governor sets a level by hand through ``Governance.set_level``."""
    visit = _visit(request, runtime)
    identity = _gate(visit, csrf)
    if isinstance(identity, Response):
        return identity
    try:
        wanted = LevelRequest.model_validate(
            {"level": int(level) if level.isdigit() else level, "reason": reason}
        )
        view = await runtime.governance.set_level(identity, workflow, case_type, wanted)
    except pydantic.ValidationError as exc:
        return _autonomy(visit, status_code=422, error=_first_error(exc, "level")[1])
    except GatewayError as exc:
        return _autonomy(visit, status_code=_status_of(exc), error=exc.detail)
    visit.say("ok", f"{workflow} {case_type} is at level {view.level} ({view.name}) now.")
    return _redirect(visit, f"{visit.base}/autonomy#{_anchor(workflow, case_type)}")


# -- the audit queue -------------------------------------------------------------------------

AUDIT_STATUSES = ("pending", "correct", "incorrect")
AUDIT_FILTERS = (*AUDIT_STATUSES, "all")


@dataclass
class _Draft:
    """A finding the page did not record, shown again on its row: what was chosen and typed,
    and why the note was refused."""

    audit_id: str
    finding: str
    note: str
    note_error: str | None = None


def _audits(
    visit: Visit,
    status: str = "pending",
    *,
    status_code: int = 200,
    draft: _Draft | None = None,
    error: str | None = None,
) -> Response:
    """The audits in one state, oldest first (the queue's order); pending ones carry the form
    that records a finding. ``error`` says why the last finding was not recorded."""
    assert visit.identity is not None
    runtime = visit.runtime
    try:
        views = runtime.audits.list(visit.identity, None if status == "all" else status)
    except GatewayError as exc:
        return _problem(visit, _status_of(exc), exc.title, exc.detail)
    now = runtime.decider.clock()
    context = {
        "section": "audits",
        "rows": [{"view": view, "age": _age(view.created_at, now)} for view in views],
        "status": status,
        "filters": AUDIT_FILTERS,
        "draft": draft,
        "error": error,
        "now": now.strftime("%Y-%m-%d %H:%M"),
    }
    return _page(visit, "audits.html", context, status_code)


@router.get("/audits", response_class=HTMLResponse)
def audits_page(
    request: Request, runtime: Rt, status: Annotated[str, Query()] = "pending"
) -> Response:
    """Executed actions drawn for post-hoc audit that this auditor may audit, by state."""
    visit = _visit(request, runtime)
    identity = _gate(visit)
    if isinstance(identity, Response):
        return identity
    if status not in AUDIT_FILTERS:
        return _problem(
            visit,
            422,
            "invalid input",
            f"status: one of {', '.join(AUDIT_FILTERS)}, not {status!r}",
        )
    return _audits(visit, status)


@router.post("/audits/{audit_id}", response_class=HTMLResponse)
async def record_finding(
    audit_id: str,
    request: Request,
    runtime: Rt,
    finding: Annotated[str, Form()] = "",
    note: Annotated[str, Form()] = "",
    csrf: Annotated[str, Form()] = "",
) -> Response:
    """Record a finding through ``Audits.record``; then back to the queue, with a message.
    A refused finding shows the queue again with what was typed and why."""
    visit = _visit(request, runtime)
    identity = _gate(visit, csrf)
    if isinstance(identity, Response):
        return identity
    draft = _Draft(audit_id, finding, note)
    try:
        wanted = FindingRequest.model_validate({"finding": finding, "note": note})
    except pydantic.ValidationError as exc:
        where, message = _first_error(exc, "finding")
        if where == "note":
            draft.note_error = message
        error = None if where == "note" else message
        return _audits(visit, status_code=422, draft=draft, error=error)
    try:
        view = await runtime.audits.record(identity, audit_id, wanted)
    except InvalidInput as exc:
        fields = dict(exc.errors)
        draft.note_error = fields.get("note")
        error = None if "note" in fields else exc.detail
        return _audits(visit, status_code=422, draft=draft, error=error)
    except GatewayError as exc:
        return _audits(visit, status_code=_status_of(exc), draft=draft, error=exc.detail)
    visit.say(
        "ok",
        f"Finding recorded: {view.action_type} on {view.resource} was {view.status} "
        f"(ledger #{view.finding_seq}).",
    )
    return _redirect(visit, f"{visit.base}/audits")


# -- the ledger's status ---------------------------------------------------------------------


def _key_ranges(keys: list[tuple[int, str]]) -> list[dict[str, Any]]:
    """Each signing key with the tree sizes it signs: from its first size up to the size
    before the next key's first (the newest key signs from its first size on: ``last`` None)."""
    lasts: list[int | None] = [first - 1 for first, _ in keys[1:]]
    lasts.append(None)
    return [
        {"vkey": vkey, "first": first, "last": last}
        for (first, vkey), last in zip(keys, lasts, strict=True)
    ]


@router.get("/ledger", response_class=HTMLResponse)
def ledger_page(request: Request, runtime: Rt) -> Response:
    """The ledger's size, its latest signed checkpoint, the signing keys with their ranges,
    and how an auditor verifies an export offline. Read-only."""
    visit = _visit(request, runtime)
    identity = _gate(visit)
    if isinstance(identity, Response):
        return identity
    ledger = runtime.ledger
    # The checkpoint before the size: the log only grows, so the size shown is never smaller
    # than the checkpoint's even if one is signed in between.
    latest = ledger.latest_checkpoint()
    context = {
        "section": "ledger",
        "checkpoint": latest,
        "root": None if latest is None else latest.root_hash.hex(),
        "size": ledger.size(),
        "keys": _key_ranges(ledger.keys()),
        "every": runtime.settings.checkpoint_every,
        "interval": runtime.settings.checkpoint_interval,
    }
    return _page(visit, "ledger.html", context)
