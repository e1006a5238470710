"""The inbox's session cookie and its key, without a browser."""

from __future__ import annotations

import stat
import time
from pathlib import Path

from gateway.ui import SESSION_SECONDS, Session, session_secret


def test_the_key_is_made_once_private_and_kept(tmp_path: Path) -> None:
    first = session_secret(tmp_path / "data")
    path = tmp_path / "data" / "ui-session-secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first) >= 32
    assert session_secret(tmp_path / "data") == first
    assert sorted(p.name for p in path.parent.iterdir()) == ["ui-session-secret"]


def test_a_session_round_trips_and_names_no_token(tmp_path: Path) -> None:
    secret = session_secret(tmp_path)
    session = Session(token_id="tok_0123456789abcdef", flash=("ok", "Signed in."))
    decoded = Session.decode(session.encode(secret), secret, time.time())
    assert decoded is not None
    assert (decoded.csrf, decoded.token_id, decoded.flash) == (
        session.csrf,
        "tok_0123456789abcdef",
        ("ok", "Signed in."),
    )
    assert decoded.changed is False


def test_a_forged_damaged_foreign_or_old_cookie_is_no_session(tmp_path: Path) -> None:
    secret = session_secret(tmp_path / "a")
    cookie = Session(token_id="tok_a").encode(secret)
    body, _, signature = cookie.partition(".")
    forged = Session(token_id="tok_b").encode(secret).partition(".")[0] + "." + signature
    now = time.time()
    assert Session.decode(forged, secret, now) is None
    assert Session.decode(body + ".", secret, now) is None
    assert Session.decode(cookie[:-2] + "AA", secret, now) is None
    assert Session.decode("not a cookie at all ü", secret, now) is None
    assert Session.decode(cookie, session_secret(tmp_path / "b"), now) is None
    assert Session.decode(cookie, secret, now + SESSION_SECONDS + 1) is None
    assert Session.decode(cookie, secret, now) is not None
