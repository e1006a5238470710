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

from gateway.decision.answer import DecisionMade
from gateway.settings import Settings

__all__ = ["configure_logging", "log_decision"]

# The loggers of the gateway's own modules ("mandate.*") and of the server that runs it.
_ROOTS = ("mandate", "uvicorn")
_decisions = logging.getLogger("mandate.decision")


def configure_logging(settings: Settings, stream: TextIO | None = None) -> None:
    """Send the gateway's logs to ``stream`` (default stderr) in the settings' format and level;
    what was configured before is replaced, so calling it again changes both."""
    # Neither format names a thread, a process or a source line: not looking them up for each
    # record is the logging HOWTO's "Optimization" (a fifth of a decision line's cost).
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging._srcfile = None
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


def log_decision(made: DecisionMade) -> None:
    """One line for a fresh decision (nothing at all below INFO: the check is the whole cost
    then)."""
    if not _decisions.isEnabledFor(logging.INFO):
        return
    answer, codes = made.answer, list(made.reason_codes)
    latency_ms = round(made.seconds * 1000, 3)
    _decisions.info(
        "%s %s %s/%s (%s) in %.1f ms",
        answer.action_id,
        answer.verdict,
        made.workflow,
        made.case_type,
        ", ".join(codes),
        latency_ms,
        extra={
            "action_id": answer.action_id,
            "workflow": made.workflow,
            "case_type": made.case_type,
            "verdict": answer.verdict,
            "reasons": codes,
            "latency_ms": latency_ms,
            "decision_seq": answer.decision_seq,
        },
    )
