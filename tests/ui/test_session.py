"""The inbox's session cookie and its key, and sessions that end on the server, without a
browser."""

from __future__ import annotations

import re
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from gateway.web.session import SESSION_COOKIE, SESSION_SECONDS, Session, session_secret
from tests.ui.conftest import Gateway


def test_the_key_is_made_once_private_and_kept(tmp_path: Path) -> None:
    first = session_secret(tmp_path / "data")
    path = tmp_path / "data" / "ui-session-secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first) >= 32
    assert session_secret(tmp_path / "data") == first
    assert sorted(p.name for p in path.parent.iterdir()) == ["ui-session-secret"]


def test_a_session_round_trips_and_names_no_token(tmp_path: Path) -> None:
    secret = session_secret(tmp_path)
    session = Session(session_id="s-0123456789abcdef", flash=("ok", "Signed in."))
    decoded = Session.decode(session.encode(secret), secret, time.time())
    assert decoded is not None
    assert (decoded.csrf, decoded.session_id, decoded.flash) == (
        session.csrf,
        "s-0123456789abcdef",
        ("ok", "Signed in."),
    )
    assert decoded.changed is False


def test_a_forged_damaged_foreign_or_old_cookie_is_no_session(tmp_path: Path) -> None:
    secret = session_secret(tmp_path / "a")
    cookie = Session(session_id="s-a").encode(secret)
    body, _, signature = cookie.partition(".")
    forged = Session(session_id="s-b").encode(secret).partition(".")[0] + "." + signature
    now = time.time()
    assert Session.decode(forged, secret, now) is None
    assert Session.decode(body + ".", secret, now) is None
    damaged = cookie[:-2] + ("AE" if cookie.endswith("AA") else "AA")  # 1 in 1,024 ends so
    assert Session.decode(damaged, secret, now) is None
    assert Session.decode("not a cookie at all ü", secret, now) is None
    assert Session.decode(cookie, session_secret(tmp_path / "b"), now) is None
    assert Session.decode(cookie, secret, now + SESSION_SECONDS + 1) is None
    assert Session.decode(cookie, secret, now) is not None


# -- sessions end on the server (real HTTP, no browser) ---------------------------------------


def _csrf(page: httpx.Response) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found is not None, page.text
    return found.group(1)


@contextmanager
def signed_in(gateway: Gateway, token: str) -> Iterator[httpx.Client]:
    """A client (its own cookie jar) signed in to the inbox with ``token``."""
    with httpx.Client(base_url=gateway.url, timeout=30.0) as client:
        login = client.get("/ui/login")
        answer = client.post(
            "/ui/login", data={"token": token, "csrf": _csrf(login), "next": "/ui/"}
        )
        assert answer.status_code == 303, answer.text
        assert client.get("/ui/").status_code == 200
        yield client


def replayed(gateway: Gateway, cookie: str) -> httpx.Response:
    """The inbox asked for with nothing but an old session cookie."""
    with httpx.Client(base_url=gateway.url, timeout=30.0) as client:
        return client.get("/ui/", headers={"Cookie": f"{SESSION_COOKIE}={cookie}"})


def test_an_old_cookie_does_not_sign_in_after_signing_out(gateway: Gateway) -> None:
    token = gateway.token("approver-signing-out", "approver")
    with signed_in(gateway, token) as client:
        kept = client.cookies[SESSION_COOKIE]
        assert replayed(gateway, kept).status_code == 200  # the cookie is the session

        out = client.post("/ui/logout", data={"csrf": _csrf(client.get("/ui/"))})
        assert out.status_code == 303
        assert out.headers["location"].endswith("/ui/login")

    again = replayed(gateway, kept)
    assert again.status_code == 303
    assert "/ui/login?next=" in again.headers["location"]


def test_signing_out_ends_that_session_only(gateway: Gateway) -> None:
    token = gateway.token("approver-two-browsers", "approver")
    with signed_in(gateway, token) as laptop, signed_in(gateway, token) as phone:
        laptop.post("/ui/logout", data={"csrf": _csrf(laptop.get("/ui/"))})
        assert laptop.get("/ui/").status_code == 303
        assert phone.get("/ui/").status_code == 200


def test_revoking_the_token_ends_its_sessions(gateway: Gateway) -> None:
    token = gateway.token("approver-revoked", "approver")
    with signed_in(gateway, token) as client:
        kept = client.cookies[SESSION_COOKIE]
        assert gateway.runtime.tokens.revoke("approver-revoked")
        assert client.get("/ui/").status_code == 303
    assert replayed(gateway, kept).status_code == 303
