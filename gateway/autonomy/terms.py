"""What a bundle's data says about earned autonomy: the window, audit rates, entry criteria,
the demotion threshold.

``data.json`` holds defaults under ``autonomy``; a workflow may override any of them under
``workflows.<workflow>.autonomy`` and a case type under
``workflows.<workflow>.case_types.<case type>.autonomy`` (objects are merged key by key, the
most specific wins). Every rate is an integer in basis points (1 % = 100 bp): the ledger holds
no floats, and the figures these terms are compared with are integers too.

    "autonomy": {
      "window": {"decisions": 200, "days": 30},
      "audit_rate_bp": {"2": 1000, "3": 0, "4": 0},
      "promotion": {
        "quorum": 1, "max_level": 4,
        "criteria": {"2": {"min_reviewed": 50, "min_agreement_bp": 9500,
                           "max_failure_bp": 200, "max_error_bp": 200}, ...}
      },
      "demotion": {"max_error_bp": 500, "min_checked": 20}
    }
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.policy.bundle import Bundle, BundleError

__all__ = ["DEFAULT_TERMS", "Criteria", "Terms", "check_terms", "terms_for"]

BASIS = 10_000  # basis points in one

DEFAULT_TERMS: dict[str, Any] = {
    "window": {"decisions": 200, "days": 30},
    "audit_rate_bp": {"2": 1000, "3": 0, "4": 0},
    "promotion": {
        "quorum": 1,
        "max_level": 4,
        "criteria": {
            "2": {
                "min_reviewed": 50,
                "min_agreement_bp": 9500,
                "max_failure_bp": 200,
                "max_error_bp": 200,
            },
            "3": {
                "min_reviewed": 50,
                "min_agreement_bp": 9700,
                "max_failure_bp": 200,
                "max_error_bp": 200,
            },
            "4": {
                "min_reviewed": 100,
                "min_agreement_bp": 9900,
                "max_failure_bp": 100,
                "max_error_bp": 100,
            },
        },
    },
    "demotion": {"max_error_bp": 500, "min_checked": 20},
}
_CRITERIA_KEYS = ("min_reviewed", "min_agreement_bp", "max_failure_bp", "max_error_bp")


@dataclass(frozen=True, slots=True)
class Criteria:
    """What the figures in the window must show before the gateway proposes ``level``."""

    level: int
    min_reviewed: int
    min_agreement_bp: int
    max_failure_bp: int
    max_error_bp: int

    def unmet(self, figures: dict[str, int]) -> list[str]:
        """The criteria the figures do not meet, each said in words (empty: all met)."""
        misses = []
        if figures["reviewed"] < self.min_reviewed:
            misses.append(f"reviewed {figures['reviewed']} < {self.min_reviewed}")
        if figures["agreement_bp"] < self.min_agreement_bp:
            misses.append(f"agreement {bp(figures['agreement_bp'])} < {bp(self.min_agreement_bp)}")
        if figures["failure_bp"] > self.max_failure_bp:
            misses.append(f"failures {bp(figures['failure_bp'])} > {bp(self.max_failure_bp)}")
        if figures["error_bp"] > self.max_error_bp:
            misses.append(f"errors {bp(figures['error_bp'])} > {bp(self.max_error_bp)}")
        return misses

    def to_json(self) -> dict[str, int]:
        """As recorded in ``autonomy`` entries."""
        return {
            "level": self.level,
            "min_reviewed": self.min_reviewed,
            "min_agreement_bp": self.min_agreement_bp,
            "max_failure_bp": self.max_failure_bp,
            "max_error_bp": self.max_error_bp,
        }


@dataclass(frozen=True, slots=True)
class Terms:
    """The autonomy terms in force for one (workflow, case type)."""

    window_decisions: int
    window_days: int
    audit_rate_bp: dict[int, int]
    quorum: int
    max_level: int
    criteria: dict[int, Criteria]
    demotion_max_error_bp: int
    demotion_min_checked: int

    def audit_rate(self, level: int) -> int:
        """The share of executed actions sampled for post-hoc audit at ``level`` (bp)."""
        return self.audit_rate_bp.get(level, 0)

    def window_json(self) -> dict[str, int]:
        """The window as recorded in ``autonomy`` entries."""
        return {"decisions": self.window_decisions, "days": self.window_days}

    def demotion_json(self) -> dict[str, int]:
        """The demotion threshold as recorded in ``autonomy`` entries."""
        return {
            "max_error_bp": self.demotion_max_error_bp,
            "min_checked": self.demotion_min_checked,
        }

    def demotion_due(self, figures: dict[str, int]) -> bool:
        """Whether the error rate in the window has crossed the threshold (with enough
        checked decisions for the rate to mean something)."""
        return (
            figures["checked"] >= self.demotion_min_checked
            and figures["error_bp"] > self.demotion_max_error_bp
        )


def bp(value: int) -> str:
    """Basis points as a percentage for people: 9500 → ``95.00 %``."""
    return f"{value // 100}.{value % 100:02d} %"


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _int(raw: Any, where: str, low: int, high: int | None = None) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < low:
        raise BundleError(f"data.json: {where} must be an integer ≥ {low}, not {raw!r}")
    if high is not None and raw > high:
        raise BundleError(f"data.json: {where} must be at most {high}, not {raw!r}")
    return raw


def _object(raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise BundleError(f"data.json: {where} must be an object")
    return raw


def _levels(raw: Any, where: str) -> dict[int, Any]:
    out = {}
    for key, value in _object(raw, where).items():
        if key not in ("1", "2", "3", "4"):
            raise BundleError(f'data.json: {where} keys are levels "1".."4", not {key!r}')
        out[int(key)] = value
    return out


def _parse(raw: dict[str, Any], where: str) -> Terms:
    window = _object(raw.get("window"), f"{where}.window")
    promotion = _object(raw.get("promotion"), f"{where}.promotion")
    demotion = _object(raw.get("demotion"), f"{where}.demotion")
    rates = {
        level: _int(rate, f"{where}.audit_rate_bp.{level}", 0, BASIS)
        for level, rate in _levels(raw.get("audit_rate_bp", {}), f"{where}.audit_rate_bp").items()
    }
    criteria = {}
    for level, item in _levels(promotion.get("criteria", {}), f"{where}.criteria").items():
        spot = f"{where}.promotion.criteria.{level}"
        item = _object(item, spot)
        values = {
            key: _int(item.get(key), f"{spot}.{key}", 0, None if key == "min_reviewed" else BASIS)
            for key in _CRITERIA_KEYS
        }
        criteria[level] = Criteria(level, **values)
    return Terms(
        window_decisions=_int(window.get("decisions"), f"{where}.window.decisions", 1),
        window_days=_int(window.get("days"), f"{where}.window.days", 1),
        audit_rate_bp=rates,
        quorum=_int(promotion.get("quorum"), f"{where}.promotion.quorum", 1),
        max_level=_int(promotion.get("max_level", 4), f"{where}.promotion.max_level", 1, 4),
        criteria=criteria,
        demotion_max_error_bp=_int(
            demotion.get("max_error_bp"), f"{where}.demotion.max_error_bp", 0, BASIS
        ),
        demotion_min_checked=_int(demotion.get("min_checked"), f"{where}.demotion.min_checked", 1),
    )


_CACHE: dict[tuple[str, str, str], Terms] = {}


def terms_for(bundle: Bundle, workflow: str, case_type: str) -> Terms:
    """The terms for a case type: defaults, then the bundle's, the workflow's, the case type's.

    Raises ``BundleError`` (naming the field) when the data is malformed.
    """
    key = (bundle.digest, workflow, case_type)
    terms = _CACHE.get(key)
    if terms is None:
        raw = _merge(DEFAULT_TERMS, _object(bundle.data.get("autonomy", {}), "autonomy"))
        where = "autonomy"
        config = bundle.data.get("workflows", {}).get(workflow)
        if isinstance(config, dict):
            if "autonomy" in config:
                where = f"workflows.{workflow}.autonomy"
                raw = _merge(raw, _object(config["autonomy"], where))
            case = (config.get("case_types") or {}).get(case_type)
            if isinstance(case, dict) and "autonomy" in case:
                where = f"workflows.{workflow}.case_types.{case_type}.autonomy"
                raw = _merge(raw, _object(case["autonomy"], where))
        terms = _parse(raw, where)
        if len(_CACHE) > 4096:
            _CACHE.clear()
        _CACHE[key] = terms
    return terms


def check_terms(bundle: Bundle) -> None:
    """Parse the terms of every case type the bundle names; ``BundleError`` if one is bad."""
    terms_for(bundle, "", "")
    for workflow, config in bundle.workflows.items():
        terms_for(bundle, workflow, "")
        for case_type in config.case_types:
            terms_for(bundle, workflow, case_type)
