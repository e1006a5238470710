"""Decision cases: YAML files in a bundle's ``tests/`` that say what the gateway must decide.

A case gives a proposal, the executor's role, the autonomy level, the figures and the history
signals, and expects a verdict (and, optionally, exactly its reason codes, its warnings and the
gateway's recommendation). The format
is documented in policies/README.md; ``load_cases`` refuses anything it does not know, naming
the file, the case and the key, so a typo never passes as a case that checks nothing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from gateway.decision.history import ZERO_HISTORY

__all__ = ["EXPECTABLE", "Case", "CaseError", "Expectation", "load_cases"]

EXPECTABLE = ("execute", "hold", "reject", "refused")
DEFAULT_NOW = "2026-01-01T00:00:00.000000Z"
_NOW = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")
_CASE_KEYS = {"name", "executor", "proposal", "level", "stats", "history", "now", "expect"}
_DEFAULT_KEYS = {"executor", "proposal", "level", "stats", "history", "now"}
_EXPECT_KEYS = {"verdict", "reasons", "recommendation", "warnings"}
_EXECUTOR_KEYS = {"role", "name", "owner", "workflow"}


class CaseError(ValueError):
    """A case file that cannot be used; the message names the file, the case and the key."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path


@dataclass(frozen=True)
class Expectation:
    """What a case expects. ``reasons`` None means the reasons are not checked."""

    verdict: str
    reasons: tuple[str, ...] | None = None
    recommendation: str | None = None
    warnings: tuple[str, ...] | None = None  # the warnings' codes; None: not checked


@dataclass(frozen=True)
class Case:
    """One decision case, with defaults applied. ``level`` None means the case type's initial
    level in the bundle's data."""

    file: str
    index: int
    name: str
    executor: dict[str, str | None]
    proposal: dict[str, Any]
    level: int | None
    stats: dict[str, Any]
    now: str
    expect: Expectation
    history: dict[str, Any] = field(default_factory=lambda: dict(ZERO_HISTORY))
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def where(self) -> str:
        """``tests/verdicts.yaml #3 (a small refund is held at level 1)``."""
        return f"{self.file} #{self.index} ({self.name})"


def load_cases(path: str, text: str) -> list[Case]:
    """Parse one case file (``path`` is its name in the bundle)."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CaseError(f"{path}: not YAML: {exc}", path) from None
    if document is None:
        return []
    defaults: dict[str, Any] = {}
    if isinstance(document, dict):
        unknown = set(document) - {"defaults", "cases"}
        if unknown:
            raise CaseError(f"{path}: unknown top-level keys {sorted(unknown)}", path)
        defaults = _mapping(document.get("defaults") or {}, f"{path}: defaults", path)
        bad = set(defaults) - _DEFAULT_KEYS
        if bad:
            raise CaseError(
                f"{path}: defaults: unknown keys {sorted(bad)}; known {sorted(_DEFAULT_KEYS)}", path
            )
        document = document.get("cases") or []
    if not isinstance(document, list):
        raise CaseError(f"{path}: expected a list of cases (or a mapping with 'cases')", path)
    return [_case(path, n, item, defaults) for n, item in enumerate(document, start=1)]


def _mapping(value: Any, where: str, path: str) -> dict[str, Any]:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise CaseError(f"{where}: expected a mapping", path)
    return value


def _case(path: str, index: int, item: Any, defaults: Mapping[str, Any]) -> Case:
    where = f"{path} #{index}"
    item = _mapping(item, where, path)
    name = item.get("name")
    if isinstance(name, str) and name.strip():
        where = f"{path} #{index} ({name})"
    else:
        raise CaseError(f"{where}: every case needs a name", path)
    unknown = set(item) - _CASE_KEYS
    if unknown:
        raise CaseError(
            f"{where}: unknown keys {sorted(unknown)}; known {sorted(_CASE_KEYS)}", path
        )
    merged = {**defaults, **{k: v for k, v in item.items() if k != "proposal"}}
    proposal = {
        **_mapping(defaults.get("proposal") or {}, f"{path}: defaults.proposal", path),
        **_mapping(item.get("proposal") or {}, f"{where}: proposal", path),
    }
    if not proposal:
        raise CaseError(f"{where}: a case needs a proposal", path)
    proposal.setdefault("resource", f"case/{index}")
    proposal.setdefault("idempotency_key", f"case-{index}")
    level = merged.get("level")
    if level is not None and (type(level) is not int or not 1 <= level <= 4):
        raise CaseError(f"{where}: level must be 1, 2, 3 or 4, got {level!r}", path)
    stats = _mapping(merged.get("stats") or {}, f"{where}: stats", path)
    history = _history(defaults.get("history"), item.get("history"), where, path)
    now = merged.get("now", DEFAULT_NOW)
    if not isinstance(now, str) or not _NOW.fullmatch(now):
        raise CaseError(f"{where}: now must look like {DEFAULT_NOW}, got {now!r}", path)
    return Case(
        file=path,
        index=index,
        name=name.strip(),
        executor=_executor(merged.get("executor"), where, path),
        proposal=proposal,
        level=level,
        stats=dict(stats),
        now=now,
        expect=_expect(item.get("expect"), where, path),
        history=history,
        raw=item,
    )


def _history(defaults: Any, value: Any, where: str, path: str) -> dict[str, Any]:
    """A case's ``input.history``: its own over the defaults' over none at all (nothing new,
    no proposals in the last hour, no amount history); ``amounts`` merges key by key."""
    history = {**ZERO_HISTORY, "amounts": dict(ZERO_HISTORY["amounts"])}
    for given in (defaults, value):
        if given is None:
            continue
        given = _mapping(given, f"{where}: history", path)
        unknown = set(given) - set(ZERO_HISTORY)
        if unknown:
            raise CaseError(
                f"{where}: history: unknown keys {sorted(unknown)}; known {sorted(ZERO_HISTORY)}",
                path,
            )
        amounts = _mapping(given.get("amounts") or {}, f"{where}: history.amounts", path)
        if set(amounts) - set(ZERO_HISTORY["amounts"]):
            raise CaseError(f"{where}: history.amounts has count, p95 and max", path)
        history |= {k: v for k, v in given.items() if k != "amounts"}
        history["amounts"] = {**history["amounts"], **amounts}
    return history


def _executor(value: Any, where: str, path: str) -> dict[str, str | None]:
    if isinstance(value, str) and value:
        value = {"role": value}
    value = _mapping(value, f"{where}: executor (a role, or a mapping with role)", path)
    unknown = set(value) - _EXECUTOR_KEYS
    if unknown or not isinstance(value.get("role"), str):
        raise CaseError(
            f"{where}: executor needs a role; known keys {sorted(_EXECUTOR_KEYS)}", path
        )
    role = value["role"]
    name = str(value.get("name") or f"{role}-case")
    workflow = value.get("workflow")
    return {
        "role": role,
        "name": name,
        "owner": str(value.get("owner") or name),
        "workflow": None if workflow is None else str(workflow),
    }


def _expect(value: Any, where: str, path: str) -> Expectation:
    value = _mapping(value, f"{where}: expect", path)
    unknown = set(value) - _EXPECT_KEYS
    if unknown:
        raise CaseError(
            f"{where}: expect: unknown keys {sorted(unknown)}; known {sorted(_EXPECT_KEYS)}", path
        )
    verdict = value.get("verdict")
    if verdict not in EXPECTABLE:
        raise CaseError(
            f"{where}: expect.verdict must be one of {', '.join(EXPECTABLE)}, got {verdict!r}",
            path,
        )
    reasons = value.get("reasons")
    if reasons is not None and (
        not isinstance(reasons, list) or not all(isinstance(r, str) for r in reasons)
    ):
        raise CaseError(f"{where}: expect.reasons must be a list of reason codes", path)
    recommendation = value.get("recommendation")
    if recommendation is not None and recommendation not in ("execute", "hold", "reject"):
        raise CaseError(f"{where}: expect.recommendation must be execute, hold or reject", path)
    warnings = value.get("warnings")
    if warnings is not None and (
        not isinstance(warnings, list) or not all(isinstance(w, str) for w in warnings)
    ):
        raise CaseError(f"{where}: expect.warnings must be a list of warning codes", path)
    return Expectation(
        verdict=verdict,
        reasons=None if reasons is None else tuple(sorted(reasons)),
        recommendation=recommendation,
        warnings=None if warnings is None else tuple(sorted(warnings)),
    )
