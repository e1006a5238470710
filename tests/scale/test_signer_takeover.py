"""Two gateway processes on one PostgreSQL database: one of them signs the periodic checkpoints,
the holder of the signer lease (a session advisory lock), and when it is killed the survivor
takes the lease over at its next tick and signs what comes after."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from gateway.db.connect import open_engine
from gateway.settings import Settings
from tests.approvals.harness import http_client, proposal, verified_ledger, wait_for
from tests.scale.conftest import (
    Gateway,
    Gateways,
    gateway_environment,
    gateway_settings,
    make_tokens,
    pg_schema,
)

INTERVAL = 0.5
THIS = "ok (this process signs the periodic checkpoints)"
ANOTHER = "ok (another process holds the signer lease)"


def signer_check(gateway: Gateway, token: str) -> str:
    """What the process's ``/readyz`` says of the checkpoint signer (and that it is ready)."""
    with http_client(gateway.url, token) as client:
        ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    check = ready.json()["checks"]["checkpoint_signer"]
    assert isinstance(check, str)
    return check


def signed_size(settings: Settings) -> int:
    """The size the latest checkpoint signs (0 before the first), read from the database:
    ``GET /v1/ledger/checkpoint`` would sign one on demand when there is none yet."""
    engine = open_engine(settings)
    try:
        with engine.connect() as conn:
            size = conn.execute(sa.text("SELECT max(size) FROM ledger_checkpoints")).scalar()
    finally:
        engine.dispose()
    return int(size or 0)


@pytest.mark.slow
def test_the_survivor_signs_the_periodic_checkpoints_after_the_holder_is_killed(
    gateways: Gateways, tmp_path: Path
) -> None:
    with pg_schema() as database:
        # Only time triggers a checkpoint here: the count never comes due.
        env = gateway_environment(
            database,
            MANDATE_CHECKPOINT_INTERVAL=str(INTERVAL),
            MANDATE_CHECKPOINT_EVERY="100000",
        )
        data_dir = tmp_path / "data"
        try:
            started = gateways.start(2, data_dir, env)
            settings = gateway_settings(database, data_dir)
            tokens = make_tokens(settings, {"booker": "booking-agent", "auditor": "auditor"})

            # One holder, however often the two timers tick.
            checks = [signer_check(g, tokens["auditor"]) for g in started]
            assert sorted(checks) == [ANOTHER, THIS], checks
            holder, survivor = started if checks[0] == THIS else started[::-1]
            # The holder's timer signs what the processes wrote on starting (key, policy).
            wait_for(
                lambda: signed_size(settings) > 0,
                timeout=10 * INTERVAL + 5,
                what="the holder's first periodic checkpoint",
            )

            holder.kill()  # SIGKILL: its session ends with it, and the lease with the session
            with http_client(survivor.url, tokens["booker"]) as booker:
                answer = booker.post("/v1/actions", json=proposal("parking", "booking.create"))
            assert answer.status_code == 200, answer.text
            decided = answer.json()["ledger"]["decision_seq"]
            # Nothing but the survivor's timer can sign it: no count comes due, nobody asks.
            wait_for(
                lambda: signed_size(settings) > decided,
                timeout=10 * INTERVAL + 5,
                what="the survivor's periodic checkpoint covering the decision",
            )
            assert signer_check(survivor, tokens["auditor"]) == THIS
            ledger = verified_ledger(survivor.url, settings, tmp_path)
            assert ledger.entries[decided]["kind"] == "decision"
        finally:
            gateways.stop()  # before the schema is dropped
