"""The gateway's logs: one stream on stderr, JSON lines (python-json-logger) or text, at the
level the settings name (``log_level``, ``log_format``).

Every decision is one line at INFO on the ``mandate.decision`` logger: the action id, workflow,
case type, verdict, reason codes and latency. Never the proposal's params, context or resource:
they may hold personal data that the ledger seals, and a log is kept and copied far more
loosely than the ledger.
"""

from __future__ import annotations

import logging
from typing import TextIO

from pythonjsonlogger.orjson import OrjsonFormatter

from gateway.schemas import Verdict
from gateway.settings import Settings

__all__ = ["configure_logging", "log_decision"]

# The loggers of the gateway's own modules ("mandate.*") and of the server that runs it.
_ROOTS = ("mandate", "uvicorn")
_decisions = logging.getLogger("mandate.decision")


def configure_logging(settings: Settings, stream: TextIO | None = None) -> None:
    """Send the gateway's logs to ``stream`` (default stderr) in the settings' format and level;
    what was configured before is replaced, so calling it again changes both."""
    handler = logging.StreamHandler(stream)
    if settings.log_format == "json":
        handler.setFormatter(
            OrjsonFormatter(
                "{levelname}{name}{message}",
                style="{",
                timestamp=True,
                rename_fields={"levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    for name in _ROOTS:
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.propagate = False
    logging.getLogger("mandate").setLevel(settings.log_level)


def log_decision(workflow: str, verdict: Verdict, seconds: float) -> None:
    """One line for a decision answered after ``seconds`` (nothing at all below INFO: the
    check is the whole cost then)."""
    if not _decisions.isEnabledFor(logging.INFO):
        return
    codes = [reason.code for reason in verdict.reasons]
    case_type = verdict.trace.autonomy.case_type
    latency_ms = round(seconds * 1000, 3)
    _decisions.info(
        "%s %s %s/%s (%s) in %.1f ms",
        verdict.action_id,
        verdict.verdict,
        workflow,
        case_type,
        ", ".join(codes),
        latency_ms,
        extra={
            "action_id": verdict.action_id,
            "workflow": workflow,
            "case_type": case_type,
            "verdict": verdict.verdict,
            "reasons": codes,
            "latency_ms": latency_ms,
            "decision_seq": verdict.ledger.decision_seq,
        },
    )
