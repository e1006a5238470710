"""``mandate demo``: a realistic stream of proposals through a real gateway, then a verified export.

A newcomer runs it right after ``make run`` and sees what Mandate does: who may do what, which
proposals run alone, which wait for a person, which are refused, and that the ledger that
recorded it all verifies offline.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import statistics
import tempfile
import time
import unicodedata
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from gateway.cli.local import open_database
from gateway.db.connect import signing_key
from gateway.identity import TokenBook
from gateway.server.serving import serve_in_background
from gateway.settings import Settings
from gateway.wording import counted
from ledger.errors import VerificationError
from ledger.note import NoteVerifier
from ledger.verify import verify_export

__all__ = ["DemoResult", "proposals", "run_demo"]

ROLES = ("booking-agent", "payments-agent", "claims-agent")


@dataclass
class DemoResult:
    """What the demo saw."""

    verdicts: Counter[tuple[str, str, str]]  # (workflow, case type, verdict)
    reasons: Counter[str]
    latencies: list[float]
    ledger_size: int
    verified: bool
    verification: str
    held: int  # this run's actions left waiting in the approvers' inbox
    revoked: list[str]  # the tokens it made, revoked before it ended


def proposals(count: int, seed: int = 7) -> Iterator[tuple[str, dict[str, Any]]]:
    """(executor role, proposal) pairs: mostly routine work, some edge cases, a few mistakes."""
    rng = random.Random(seed)  # noqa: S311 - a repeatable demo mix, not a secret
    run = secrets.token_hex(4)
    for n in range(count):
        pick = rng.random()
        key = f"demo-{run}-{n}"
        if pick < 0.40:
            resource = f"lot-{rng.randint(1, 9)}/space-{rng.randint(1, 300)}"
            customer = rng.randint(1000, 9999)
            yield (
                "booking-agent",
                _proposal(
                    "parking",
                    "booking.create",
                    resource,
                    _person("customer", f"C-{customer}", customer)
                    | {"start": "2026-12-01T08:00:00Z"},
                    round(rng.uniform(0.65, 0.99), 2),
                    key,
                ),
            )
        elif pick < 0.50:
            # A booking agent trying to issue a refund: beyond its mandate.
            yield (
                "booking-agent",
                _proposal(
                    "parking", "refund.issue", f"booking/B-{n}", {"amount": "15.00"}, 0.9, key
                ),
            )
        elif pick < 0.65:
            amount = rng.choice(["12.50", "20.00", "45.00", "80.00", "1500.00"])
            yield (
                "payments-agent",
                _proposal(
                    "parking", "refund.issue", f"booking/B-{n}", {"amount": amount}, 0.97, key
                ),
            )
        else:
            amount = rng.choice(["350", "800", "2400", "4800", "12000", "26000", "60000"])
            yield (
                "claims-agent",
                _proposal(
                    "claims",
                    "claim.approve",
                    f"claim/CL-{n}",
                    {"amount": amount, "policy": f"P-{rng.randint(100, 999)}"}
                    | _person("claimant", f"H-{1000 + n}", n),
                    round(rng.uniform(0.85, 0.99), 2),
                    key,
                ),
            )


# Personal data the bundle seals (data.json personal_data): the demo's people are made up.
_NAMES = ("Ada Byron", "Ben Okafor", "Chloé Martin", "Dev Patel", "Eva Nováková", "Femi Adeyemi")


def _person(role: str, identifier: str, number: int) -> dict[str, str]:
    """A made-up data subject: their id, email and name, as ``role``_… fields."""
    name = _NAMES[number % len(_NAMES)]
    first = unicodedata.normalize("NFKD", name.split()[0]).encode("ascii", "ignore").decode()
    email = f"{first.lower()}.{number}@example.org"
    return {role: identifier, f"{role}_email": email, f"{role}_name": name}


def _proposal(
    workflow: str,
    action_type: str,
    resource: str,
    params: dict[str, Any],
    confidence: float,
    key: str,
) -> dict[str, Any]:
    return {
        "workflow": workflow,
        "action_type": action_type,
        "resource": resource,
        "params": params,
        "confidence": confidence,
        "context": {"source": "mandate demo"},
        "idempotency_key": key,
    }


@contextmanager
def _gateway(settings: Settings, url: str | None, console: Console) -> Iterator[str]:
    """The URL of a running gateway: the one given, the default one if it answers, or one
    started here for the length of the demo."""
    candidate = url or f"http://{settings.host}:{settings.port}"
    try:
        httpx.get(f"{candidate}/healthz", timeout=2).raise_for_status()
    except httpx.HTTPError:
        if url:
            raise
        with serve_in_background(settings) as served:
            console.print(
                f"no gateway answered at {candidate}; started one at {served.url} for the demo",
                highlight=False,
            )
            yield served.url
        return
    console.print(f"using the gateway at {candidate}", highlight=False)
    yield candidate


async def _send(
    url: str, tokens: dict[str, str], items: list[tuple[str, dict[str, Any]]], concurrency: int
) -> tuple[list[dict[str, Any]], list[float]]:
    results: list[dict[str, Any]] = []
    latencies: list[float] = []
    queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            role, body = queue.get_nowait()
            started = time.perf_counter()
            response = await client.post(
                "/v1/actions", json=body, headers={"Authorization": f"Bearer {tokens[role]}"}
            )
            latencies.append(time.perf_counter() - started)
            answer = response.json()
            trace = answer.get("trace") or {"autonomy": {"case_type": body["action_type"]}}
            answer["_workflow"] = body["workflow"]
            answer["_case_type"] = trace["autonomy"]["case_type"]
            answer["_status"] = response.status_code
            results.append(answer)

    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return results, latencies


def run_demo(
    settings: Settings, *, url: str | None, actions: int, console: Console, concurrency: int = 8
) -> DemoResult:
    """Make executor tokens, send ``actions`` proposals, export and verify the ledger, and
    revoke the tokens again (whatever happened meanwhile: none outlives the demo)."""
    suffix = secrets.token_hex(3)
    names = {role: f"demo-{role}-{suffix}" for role in (*ROLES, "auditor")}
    engine = open_database(settings)
    book = TokenBook(engine)
    tokens: dict[str, str] = {}  # by role
    try:
        for role, name in names.items():
            tokens[role] = book.create(name=name, role=role)[0]
        result = _run(settings, url, actions, console, concurrency, tokens)
    finally:
        revoked = [names[role] for role in tokens if book.revoke(names[role])]
        engine.dispose()
    result.revoked = revoked
    _report(result, console)
    return result


def _run(
    settings: Settings,
    url: str | None,
    actions: int,
    console: Console,
    concurrency: int,
    tokens: dict[str, str],
) -> DemoResult:
    items = list(proposals(actions))
    with _gateway(settings, url, console) as base:
        console.print(
            f"made tokens for {', '.join(ROLES)} (and an auditor); sending {len(items)} "
            f"proposals, {concurrency} at a time…",
            highlight=False,
        )
        results, latencies = asyncio.run(_send(base, tokens, items, concurrency))
        auth = {"Authorization": f"Bearer {tokens['auditor']}"}
        with tempfile.TemporaryDirectory() as tmp:
            export = Path(tmp) / "ledger.jsonl"
            with httpx.stream("GET", f"{base}/v1/ledger/export", headers=auth, timeout=120) as r:
                r.raise_for_status()
                with export.open("wb") as out:
                    for chunk in r.iter_bytes():
                        out.write(chunk)
            key = NoteVerifier.from_vkey(signing_key(settings).vkey)
            try:
                verified = verify_export(export, [key])
                ok, summary = (
                    True,
                    (
                        f"VALID: {counted(verified.size, 'entry', 'entries')}, root "
                        f"{verified.root.hex()[:16]}…, "
                        f"{counted(verified.checkpoints, 'signed checkpoint')}"
                    ),
                )
                size = verified.size
            except VerificationError as exc:
                ok, summary, size = False, f"TAMPERED: {exc}", 0
    verdicts: Counter[tuple[str, str, str]] = Counter()
    reasons: Counter[str] = Counter()
    for answer in results:
        verdict = answer.get("verdict", f"HTTP {answer['_status']}")
        verdicts[(answer["_workflow"], answer["_case_type"], verdict)] += 1
        for reason in answer.get("reasons", []):
            reasons[reason["code"]] += 1
    held = sum(n for (_, _, verdict), n in verdicts.items() if verdict == "hold")
    return DemoResult(verdicts, reasons, latencies, size, ok, summary, held, [])


def _report(result: DemoResult, console: Console) -> None:
    table = Table(title="verdicts by workflow and case type")
    for column in ("workflow", "case type", "execute", "hold", "reject", "other"):
        table.add_column(
            column, justify="right" if column not in ("workflow", "case type") else "left"
        )
    keys = sorted({(w, c) for w, c, _ in result.verdicts})
    for workflow, case_type in keys:
        counts = {
            v: n for (w, c, v), n in result.verdicts.items() if (w, c) == (workflow, case_type)
        }
        other = sum(n for v, n in counts.items() if v not in ("execute", "hold", "reject"))
        table.add_row(
            workflow,
            case_type,
            *(str(counts.get(v, 0)) for v in ("execute", "hold", "reject")),
            str(other),
        )
    console.print(table)
    if result.reasons:
        console.print(
            "why: " + ", ".join(f"{code} ×{n}" for code, n in result.reasons.most_common()),
            highlight=False,
        )
    if result.latencies:
        ordered = sorted(result.latencies)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        console.print(
            f"latency (proposal to durable verdict, over HTTP): median "
            f"{statistics.median(ordered) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms",
            highlight=False,
        )
    console.print(f"export check: {result.verification}", highlight=False)
    console.print(
        f"revoked the demo's {counted(len(result.revoked), 'token')} "
        f"({', '.join(result.revoked)}): none of them works any more.",
        highlight=False,
    )
    console.print(
        f"Left in the ledger: {counted(result.ledger_size, 'entry', 'entries')} in all, this "
        "run's proposals and decisions among them. The ledger is append-only: they stay, and "
        "verify (`mandate ledger export`, then `mandate ledger verify`).",
        highlight=False,
    )
    console.print(
        f"Left in the inbox: {counted(result.held, 'held action')} of this run, waiting for an "
        "approver (`mandate approvals list`, or the inbox at /ui/); unanswered, they expire and "
        "never execute.",
        highlight=False,
    )
