"""What the strict parse of a request body costs (``gateway.api.strict_json.parse_body``), against
the lenient parse it replaced (``json.loads``, what FastAPI ran on every JSON body).

The bodies: a typical proposal (the README's, with an amount and a context; about 300 bytes)
and a large one (its context padded with 200 small objects to about 16 KB). Per body, in
microseconds per parse:

- ``lenient_*``: ``json.loads(body)``, the baseline;
- ``strict_*``: ``parse_body(body)``, which refuses duplicate keys and non-finite numbers;
- ``refused``: ``parse_body`` of the typical proposal with ``"amount"`` sent twice, which
  raises after a second, lenient parse that names the field (what a bad request costs).

The two parses run in turns, batch by batch, so that the neighbours' load falls on both; each
run's figure is the median of its batches, and the figure is the median of the runs.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from bench._common import Context, Figure
from gateway.api.strict_json import BodyError, parse_body

NAME = "body_parse"
GROUP = "gateway"
DESCRIPTION = "strict JSON parse of a request body vs json.loads (µs per proposal)"

TYPICAL: dict[str, Any] = {
    "workflow": "parking",
    "action_type": "refund.issue",
    "case_type": "refund.issue",
    "resource": "booking/B-1042",
    "params": {"amount": "20.00", "customer": "C-1001", "start": "2026-12-01T08:00:00Z"},
    "confidence": 0.95,
    "context": {"channel": "email", "thread": ["m-1", "m-2"]},
    "idempotency_key": "refund-B-1042-1",
}


def _bodies() -> dict[str, bytes]:
    large = dict(TYPICAL)
    large["context"] = {
        "lines": [{"sku": f"s-{i}", "qty": i, "note": "x" * 40} for i in range(200)]
    }
    return {"typical": json.dumps(TYPICAL).encode(), "large": json.dumps(large).encode()}


def _refused(body: bytes) -> None:
    try:
        parse_body(body)
    except BodyError:
        return
    raise AssertionError("the body with a duplicate key was taken")


def _per_call(call: Callable[[], object], calls: int) -> float:
    """Microseconds per call, over one batch of ``calls``."""
    start = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - start) / calls * 1e6


def run(ctx: Context) -> None:
    bodies = _bodies()
    duplicate = bodies["typical"].replace(b'"customer"', b'"amount": "5000", "customer"')
    batches = 5 if ctx.quick else 50
    calls = {"typical": 200 if ctx.quick else 5000, "large": 10 if ctx.quick else 200}
    for name, body in bodies.items():
        assert parse_body(body) == json.loads(body)
        lenient_runs, strict_runs = [], []
        for _ in range(ctx.repeat):
            lenient, strict = [], []
            for _ in range(batches):
                lenient.append(_per_call(partial(json.loads, body), calls[name]))
                strict.append(_per_call(partial(parse_body, body), calls[name]))
            lenient_runs.append(statistics.median(lenient))
            strict_runs.append(statistics.median(strict))
        note = f"{len(body):,}-byte body"
        ctx.figure(Figure(f"{NAME}.lenient_{name}", tuple(lenient_runs), "µs", digits=2, note=note))
        ratio = statistics.median(strict_runs) / statistics.median(lenient_runs)
        ctx.figure(
            Figure(
                f"{NAME}.strict_{name}",
                tuple(strict_runs),
                "µs",
                baseline=f"{NAME}.lenient_{name}",
                ratio=ratio,
                digits=2,
                note=note,
            )
        )
    refused_runs = [
        statistics.median(
            _per_call(partial(_refused, duplicate), calls["typical"]) for _ in range(batches)
        )
        for _ in range(ctx.repeat)
    ]
    ctx.figure(
        Figure(
            f"{NAME}.refused",
            tuple(refused_runs),
            "µs",
            digits=2,
            note="the typical body with a duplicate key: both parses and the error",
        )
    )
