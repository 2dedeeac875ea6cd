"""The Grafana dashboard: valid dashboard JSON whose queries use only metrics the app defines."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from qvg_serve.serve.metrics import METRIC_NAMES, describe

DASHBOARD = (
    Path(__file__).resolve().parents[2] / "charts" / "qvg-serve" / "dashboards" / "qvg-serve.json"
)
# Series a histogram (or counter) exposes beside its family name.
SUFFIXES = ("_bucket", "_sum", "_count")


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def exprs(dashboard) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def metric_names(expr: str) -> set[str]:
    """qvg_ names in a PromQL expression, with histogram series suffixes removed."""
    names = set()
    for name in re.findall(r"\bqvg_[a-z0-9_]+", expr):
        for suffix in SUFFIXES:
            if name.removesuffix(suffix) in METRIC_NAMES:
                name = name.removesuffix(suffix)
        names.add(name)
    return names


def test_is_a_grafana_dashboard(dashboard):
    assert dashboard["title"] and dashboard["uid"]
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 36
    assert "id" not in dashboard or dashboard["id"] is None  # importable into any Grafana
    names = {v["name"] for v in dashboard["templating"]["list"]}
    assert "datasource" in names


def test_panels_have_unique_ids_titles_and_targets(dashboard):
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(panels) >= 8 and len(ids) == len(set(ids))
    for p in panels:
        assert p["title"] and p["type"] in {"timeseries", "stat", "gauge", "bargauge", "table"}
        assert (
            set(p["gridPos"]) == {"h", "w", "x", "y"}
            and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        )
        assert p["targets"], p["title"]
        ref_ids = [t["refId"] for t in p["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), p["title"]
        assert p["datasource"]["uid"] == "${datasource}"


def test_panels_do_not_overlap(dashboard):
    cells = set()
    for p in dashboard["panels"]:
        g = p["gridPos"]
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & mine, p["title"]
        cells |= mine


def test_every_queried_metric_exists(dashboard):
    used = set().union(*(metric_names(e) for e in exprs(dashboard)))
    assert used, "no qvg_ metric queried"
    unknown = used - set(METRIC_NAMES)
    assert not unknown, (
        f"dashboard queries metrics qvg_serve.serve.metrics does not define: {unknown}"
    )


def test_dashboard_covers_the_required_views(dashboard):
    by_name = {m.name: m for m in describe()}
    used = set().union(*(metric_names(e) for e in exprs(dashboard)))
    # the views issue 8 asks for, by the metric type they need
    gauges = {n for n in used if by_name[n].type == "gauge"}
    counters = {n for n in used if by_name[n].type == "counter"}
    histograms = {n for n in used if by_name[n].type == "histogram"}
    assert {"state"} <= set().union(*(by_name[n].labels for n in gauges))
    assert {"format", "tier"} <= set().union(*(by_name[n].labels for n in gauges))
    assert {"rung", "reason"} <= set().union(*(by_name[n].labels for n in counters))
    assert any(n.endswith("_ratio") for n in gauges)
    assert len(histograms) >= 2
    quantiles = [e for e in exprs(dashboard) if "histogram_quantile" in e]
    assert quantiles and all("_bucket" in e and "by (le)" in e for e in quantiles)


def test_counters_are_queried_as_rates(dashboard):
    counters = {m.name for m in describe() if m.type == "counter"}
    for expr in exprs(dashboard):
        for name in metric_names(expr) & counters:
            assert re.search(rf"(rate|increase)\({name}\b", expr), expr
