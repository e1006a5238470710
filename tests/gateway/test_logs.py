"""Structured logs: one line per decision (action id, verdict, reason codes, latency), never
the proposal's params; the level and the format are settings; `mandate serve` writes JSON lines
only, its banner among them."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.logs import configure_logging
from gateway.server.serving import free_port
from gateway.settings import Settings
from tests.conftest import Database
from tests.gateway.support import (
    POLICIES,
    Gateway,
    Serve,
    copy_bundle,
    good_booking,
    proposal,
    wait_for,
)

MANDATE = Path(sys.executable).with_name("mandate")
SECRET = "plate-KX-4711-secret"  # a value in params that no log line may carry


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    """What the gateway logs while the test runs, as configure_logging leaves it afterwards."""
    kept = {
        name: (logging.getLogger(name).handlers[:], logging.getLogger(name).propagate)
        for name in ("mandate", "uvicorn")
    }
    level = logging.getLogger("mandate").level
    yield io.StringIO()
    for name, (handlers, propagate) in kept.items():
        logging.getLogger(name).handlers[:] = handlers
        logging.getLogger(name).propagate = propagate
    logging.getLogger("mandate").setLevel(level)


def decision_lines(text: str, action_id: str) -> list[str]:
    return [line for line in text.splitlines() if action_id in line]


def test_each_decision_is_one_json_line_without_the_params(
    sqlite_gateway: Gateway, logs: io.StringIO
) -> None:
    configure_logging(Settings(log_format="json", log_level="info"), logs)
    booking = sqlite_gateway.as_role("booking-agent")

    held = booking.post(
        "/v1/actions",
        json=proposal("parking", "booking.create", confidence=0.5, params={"plate": SECRET}),
    ).json()

    (line,) = decision_lines(logs.getvalue(), held["action_id"])
    record = json.loads(line)
    assert record["logger"] == "mandate.decision"
    assert record["level"] == "INFO"
    assert record["action_id"] == held["action_id"]
    assert record["verdict"] == "hold"
    assert (record["workflow"], record["case_type"]) == ("parking", "booking.create")
    assert record["reasons"] == [reason["code"] for reason in held["reasons"]]
    assert record["latency_ms"] > 0
    assert "timestamp" in record
    assert SECRET not in logs.getvalue()


def test_a_retry_decides_nothing_so_it_is_neither_logged_nor_counted_again(
    sqlite_gateway: Gateway, logs: io.StringIO
) -> None:
    configure_logging(Settings(log_format="json", log_level="info"), logs)
    booking = sqlite_gateway.as_role("booking-agent")
    sent = proposal("parking", "booking.create", confidence=0.5)
    before = held_bookings(sqlite_gateway)

    first = booking.post("/v1/actions", json=sent)
    again = booking.post("/v1/actions", json=sent)

    assert again.content == first.content  # the recorded answer, byte for byte
    assert len(decision_lines(logs.getvalue(), first.json()["action_id"])) == 1
    assert held_bookings(sqlite_gateway) == before + 1


def held_bookings(gateway: Gateway) -> float:
    """mandate_decisions_total of held parking bookings, from a scrape of /metrics (none
    before the first)."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in gateway.as_role("governor").get("/metrics").text.splitlines()
        if line.startswith("mandate_decisions_total{")
        and 'workflow="parking"' in line
        and 'case_type="booking.create"' in line
        and 'verdict="hold"' in line
    )


def test_a_fail_closed_answer_is_a_warning_naming_its_cause(
    tmp_path: Path, sqlite_database: Database, serve_gateway: Serve, logs: io.StringIO
) -> None:
    bundle = copy_bundle(tmp_path)
    model = bundle / "casbin" / "model.conf"
    model.write_text(
        model.read_text().replace("keyMatch(r.obj, p.obj)", "keyMatchTypo(r.obj, p.obj)")
    )
    gateway = serve_gateway(sqlite_database, policies=bundle)
    configure_logging(Settings(log_format="json", log_level="WARNING"), logs)

    refused = gateway.as_role("booking-agent").post("/v1/actions", json=good_booking())

    assert refused.status_code == 503
    (record,) = [json.loads(line) for line in logs.getvalue().splitlines()]
    assert record["level"] == "WARNING"
    assert (record["cause"], record["path"]) == ("casbin", "/v1/actions")
    assert "keyMatchTypo" in record["message"]


def test_text_format_and_a_level_above_info_are_honoured(
    sqlite_gateway: Gateway, logs: io.StringIO
) -> None:
    booking = sqlite_gateway.as_role("booking-agent")
    configure_logging(Settings(log_format="text", log_level="INFO"), logs)
    shown = booking.post("/v1/actions", json=good_booking()).json()
    (line,) = decision_lines(logs.getvalue(), shown["action_id"])
    assert " INFO mandate.decision " in line
    assert f"{shown['action_id']} execute parking/booking.create" in line
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)

    configure_logging(Settings(log_format="text", log_level="WARNING"), logs)
    quiet = booking.post("/v1/actions", json=good_booking()).json()
    assert decision_lines(logs.getvalue(), quiet["action_id"]) == []


def test_mandate_serve_writes_json_lines_only(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MANDATE_")}
    env |= {"MANDATE_DATA_DIR": str(data), "MANDATE_LOG_FORMAT": "json"}
    token = subprocess.run(
        [str(MANDATE), "token", "create", "--name", "bot", "--role", "booking-agent"],
        env=env | {"MANDATE_POLICIES": str(POLICIES)},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    port = free_port()
    server = subprocess.Popen(
        [str(MANDATE), "serve", "--port", str(port), "--policies", str(POLICIES)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        assert wait_for(lambda: _answers(url), timeout=60), "the gateway did not start"
        body = good_booking(params={"plate": SECRET})
        answer = httpx.post(
            f"{url}/v1/actions", json=body, headers={"Authorization": f"Bearer {token}"}
        )
        assert answer.status_code == 200, answer.text
    finally:
        server.send_signal(signal.SIGINT)
        _, stderr = server.communicate(timeout=60)

    records: list[dict[str, Any]] = [json.loads(line) for line in stderr.splitlines() if line]
    assert records[0]["message"] == f"Mandate gateway on {url}"
    (decision,) = [r for r in records if r.get("action_id") == answer.json()["action_id"]]
    assert decision["verdict"] == "execute"
    assert SECRET not in stderr


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz").status_code == 200
    except httpx.TransportError:
        return False
