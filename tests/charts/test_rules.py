"""The Prometheus rules: known metrics only, every alert tested with promtool, shipped by the chart.

promtool comes from Debian's `prometheus` package (.ci/run installs it); without it the promtool
tests skip, saying so.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from qvg_serve.serve.metrics import METRIC_NAMES, describe

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "charts" / "qvg-serve" / "rules" / "qvg-serve.rules.yaml"
UNIT_TESTS = Path(__file__).with_name("qvg-serve.rules.test.yaml")
SUFFIXES = ("_bucket", "_sum", "_count")
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not on PATH (apt-get install prometheus; .ci/run does)"
)


def rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def metric_names(expr: str) -> set[str]:
    """qvg_ metric families in a PromQL expression (histogram series suffixes removed)."""
    names = set()
    for name in re.findall(r"\bqvg_[a-z0-9_]+", expr):
        for suffix in SUFFIXES:
            if name.removesuffix(suffix) in METRIC_NAMES:
                name = name.removesuffix(suffix)
        names.add(name)
    return names


def families(expr: str, recorded: dict[str, str]) -> set[str]:
    """Metric families an expression reads, following recorded series to their expressions."""
    names = metric_names(expr)
    for record, body in recorded.items():
        if re.search(rf"(?<![\w:]){re.escape(record)}(?![\w:])", expr):
            names |= families(body, recorded)
    return names


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120)


def test_rules_query_only_metrics_the_app_defines():
    used = set().union(*(metric_names(r["expr"]) for r in rules()))
    assert used and not used - set(METRIC_NAMES), used - set(METRIC_NAMES)
    tested = set(re.findall(r"\bqvg_[a-z0-9_]+", UNIT_TESTS.read_text()))
    assert {metric_names(n).pop() for n in tested} <= set(METRIC_NAMES)


def test_counters_are_read_as_rates_and_recordings_are_named_by_convention():
    counters = {m.name for m in describe() if m.type == "counter"}
    for rule in rules():
        for name in metric_names(rule["expr"]) & counters:
            assert re.search(rf"(rate|increase)\({name}\b", rule["expr"]), rule["expr"]
        if "record" in rule:
            assert re.fullmatch(r"qvg:[a-z0-9_]+:[a-z0-9_]+", rule["record"]), rule["record"]


def test_alerts_cover_the_operating_risks():
    recorded = {r["record"]: r["expr"] for r in rules() if "record" in r}
    alerts = {r["alert"]: r for r in rules() if "alert" in r}
    reads = {name: families(r["expr"], recorded) for name, r in alerts.items()}
    needed = {
        "qvg_kv_usage_ratio",  # KV pressure on a replica
        "qvg_kv_bytes",  # KV pressure over the cluster
        "qvg_requests_rejected_total",  # 429 rate
        "qvg_time_to_first_frame_seconds",  # TTFF p99
        "qvg_replica_start_time_seconds",  # restarts
        "qvg_ladder_transitions_total",  # drops / preemptions
    }
    assert needed <= set().union(*reads.values())
    assert any(re.search(r"\bup\b", r["expr"]) for r in alerts.values())  # a target gone
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name


def test_every_alert_has_a_firing_and_a_quiet_promtool_case():
    tests = yaml.safe_load(UNIT_TESTS.read_text())["tests"]
    cases = [c for t in tests for c in t["alert_rule_test"]]
    for name in (r["alert"] for r in rules() if "alert" in r):
        mine = [c for c in cases if c["alertname"] == name]
        assert any(c["exp_alerts"] for c in mine), f"{name}: no case where it fires"
        assert any(not c["exp_alerts"] for c in mine), f"{name}: no case where it stays quiet"


@needs_promtool
def test_promtool_check_rules():
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


@needs_promtool
def test_promtool_unit_tests_pass():
    result = promtool("test", "rules", str(UNIT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_chart_ships_the_rules_as_a_prometheus_rule():
    helm = pytest.importorskip("helm_python", reason="helm-python-sdk: Linux x86_64 wheels only")
    with helm.Chart.load(RULES.parents[1]) as chart:
        off = chart.render(name="qvg", namespace="serving")
        on = chart.render(
            values={"monitoring": {"prometheusRule": {"enabled": True, "labels": {"r": "k"}}}},
            name="qvg",
            namespace="serving",
        )
    assert not any("PrometheusRule" in body for body in off.values())
    docs = [d for n, b in on.items() if n.endswith(".yaml") for d in yaml.safe_load_all(b) if d]
    (doc,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    assert doc["metadata"]["labels"]["r"] == "k"
    assert doc["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]


def test_every_alert_has_a_dashboard_panel():
    dashboard = json.loads((RULES.parents[1] / "dashboards" / "qvg-serve.json").read_text())
    text = " ".join(p["title"] + " " + p.get("description", "") for p in dashboard["panels"])
    for name in (r["alert"] for r in rules() if "alert" in r):
        assert name in text, f"no dashboard panel names {name}"
