"""The example receiver in ``adapters/examples/``, called directly: it carries out a signed call
once per Idempotency-Key and refuses forged, tampered, stale and unsigned ones."""

from __future__ import annotations

import json
import threading
import time

from adapters.examples.receiver import Receiver
from adapters.signing import SIGNATURE_HEADER, sign, verify

SECRET = b"receiver-secret"
BODY = json.dumps({"action_id": "act_1", "action_type": "refund.issue"}).encode()


def headers(signature: str, key: str = "act_1") -> dict[str, str]:
    """Headers as the receiver's HTTP handler passes them (lower-case names)."""
    return {SIGNATURE_HEADER.lower(): signature, "idempotency-key": key}


def test_a_signed_call_is_carried_out_and_its_replay_within_the_window_is_not() -> None:
    receiver = Receiver(SECRET)
    signed = headers(sign(SECRET, BODY, int(time.time())))
    assert receiver.handle(signed, BODY) == (200, "done")
    assert receiver.handle(dict(signed), BODY) == (200, "already done")
    assert list(receiver.done) == ["act_1"]
    assert receiver.done["act_1"]["action_type"] == "refund.issue"
    assert receiver.calls["act_1"] == 2
    assert receiver.refused == []


def test_forged_tampered_stale_and_unsigned_calls_are_refused() -> None:
    receiver = Receiver(SECRET, tolerance=300)
    now = int(time.time())
    forged = sign(b"someone else's secret", BODY, now)
    tampered_body = BODY.replace(b"refund", b"payout")
    stale = sign(SECRET, BODY, now - 301)
    future = sign(SECRET, BODY, now + 301)
    for signature, body in (
        (forged, BODY),
        (sign(SECRET, BODY, now), tampered_body),
        (stale, BODY),
        (future, BODY),
        ("", BODY),
        (f"t={now}", BODY),
        ("t=soon,v1=00", BODY),
    ):
        status, _ = receiver.handle(headers(signature), body)
        assert status == 401, signature
    assert receiver.done == {}
    assert len(receiver.refused) == 7
    # The signature binds the timestamp: moving t to now does not revive an old signature.
    old_mac = stale.split("v1=")[1]
    assert not verify(SECRET, f"t={now},v1={old_mac}", BODY, now)


def test_a_call_without_an_idempotency_key_is_refused() -> None:
    receiver = Receiver(SECRET)
    status, text = receiver.handle(headers(sign(SECRET, BODY, int(time.time())), key=""), BODY)
    assert (status, receiver.done) == (400, {})
    assert "Idempotency-Key" in text


def test_the_same_key_arriving_twice_at_once_is_carried_out_once() -> None:
    # A gateway whose attempt timed out sends the action again while the first call is still
    # being carried out: the receiver must not do it twice, and must tell the gateway to retry.
    receiver = Receiver(SECRET, delay=0.5)
    signed = headers(sign(SECRET, BODY, int(time.time())))
    answers: list[tuple[int, str]] = []
    first = threading.Thread(target=lambda: answers.append(receiver.handle(signed, BODY)))
    first.start()
    while receiver.calls["act_1"] == 0:  # the first call is in progress
        time.sleep(0.005)
    answers.append(receiver.handle(dict(signed), BODY))
    first.join()
    assert sorted(text for _, text in answers).count("done") == 1, answers
    (second,) = [a for a in answers if a[1] != "done"]
    assert second[0] == 409, answers  # in progress: retry later (the IETF Idempotency-Key draft)
    assert receiver.handle(dict(signed), BODY) == (200, "already done")
