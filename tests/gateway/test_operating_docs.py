"""The operator's documents hold what a real gateway has: docs/grafana-dashboard.json queries
only what /metrics exposes, and shows all of it; docs/OPERATING.md names every metric and every
setting."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from gateway.settings import Settings
from tests.gateway.support import Gateway

DOCS = Path(__file__).parents[2] / "docs"
DASHBOARD = DOCS / "grafana-dashboard.json"
OPERATING = DOCS / "OPERATING.md"
# The series names a family of each type exposes (prometheus_client strips them from the name).
_SERIES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_count", "_sum"),
    "gauge": ("",),
}


def queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    variables = dashboard["templating"]["list"]
    return exprs + [v["query"]["query"] for v in variables if v["type"] == "query"]


def scraped(gateway: Gateway) -> dict[str, str]:
    """The metric families of a real scrape, and their types."""
    response = gateway.as_role("auditor").get("/metrics")
    assert response.status_code == 200
    return {f.name: f.type for f in text_string_to_metric_families(response.text)}


def test_every_metric_the_dashboard_queries_is_exposed_and_every_one_is_shown(
    sqlite_gateway: Gateway,
) -> None:
    families = scraped(sqlite_gateway)
    exposed = {name + suffix for name, kind in families.items() for suffix in _SERIES[kind]}
    queried = {name for expr in queries() for name in re.findall(r"\bmandate_\w+", expr)}

    assert queried - exposed == set(), "the dashboard queries metrics that /metrics lacks"
    shown = {name for name in families if any(name + s in queried for s in _SERIES[families[name]])}
    assert set(families) - shown == set(), "metrics the dashboard does not show"


def test_operating_md_names_every_metric_and_every_setting(sqlite_gateway: Gateway) -> None:
    text = OPERATING.read_text()
    families = scraped(sqlite_gateway)
    metrics = {
        name + _SERIES[kind][0] if kind == "counter" else name for name, kind in families.items()
    }
    settings = {f"MANDATE_{name.upper()}" for name in Settings.model_fields}

    assert {m for m in metrics if f"`{m}`" not in text} == set()
    assert {s for s in settings if f"`{s}`" not in text} == set()
    # and nothing that is no longer there
    named = set(re.findall(r"`(MANDATE_[A-Z_]+)`", text))
    dialect = {"MANDATE_URL", "MANDATE_TOKEN"}  # the CLI's, not the gateway's
    assert named - settings - dialect == set()
    assert set(re.findall(r"`(mandate_[a-z_]+)`", text)) - metrics == set()
