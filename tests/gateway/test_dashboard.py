"""docs/grafana-dashboard.json queries only what a real gateway's /metrics exposes, and shows
all of it."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.gateway.support import Gateway

DASHBOARD = Path(__file__).parents[2] / "docs" / "grafana-dashboard.json"
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


def test_every_metric_the_dashboard_queries_is_exposed_and_every_one_is_shown(
    sqlite_gateway: Gateway,
) -> None:
    response = sqlite_gateway.as_role("auditor").get("/metrics")
    assert response.status_code == 200
    families = {f.name: f.type for f in text_string_to_metric_families(response.text)}
    exposed = {name + suffix for name, kind in families.items() for suffix in _SERIES[kind]}
    queried = {name for expr in queries() for name in re.findall(r"\bmandate_\w+", expr)}

    assert queried - exposed == set(), "the dashboard queries metrics that /metrics lacks"
    shown = {name for name in families if any(name + s in queried for s in _SERIES[families[name]])}
    assert set(families) - shown == set(), "metrics the dashboard does not show"
