"""Metrics: naming rules, bounded labels, exposition that Prometheus' parser and promtool accept."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from qvg_serve.serve.metrics import METRIC_NAMES, REJECT_REASONS, STATES, Metrics, describe
from scheduler.config import RUNGS

UNIT_SUFFIXES = ("_seconds", "_bytes", "_ratio", "_total", "_streams", "_pages")


def _exercised() -> Metrics:
    m = Metrics()
    m.set_streams({"running": 3, "waiting": 1})
    m.waiting.set(1)
    m.set_kv({("bf16", "gpu"): 6, ("qvg-int2", "cpu"): 2}, {("bf16", "gpu"): 6 << 20})
    m.kv_capacity_bytes.labels(tier="gpu").set(256 << 20)
    m.kv_bf16_equivalent_bytes.labels(tier="gpu").set(8 << 20)
    m.kv_usage.set(0.4)
    m.compression.set(1.3)
    m.transition("encode", 2)
    m.preemptions.inc()
    m.reject("capacity")
    m.frames.inc(12)
    m.observe_step(0.02, 3)
    m.ttff.observe(0.4)
    m.inter_chunk.observe(0.19)
    return m


def test_names_follow_the_rules():
    assert len(set(METRIC_NAMES)) == len(METRIC_NAMES)
    for info in describe():
        assert re.fullmatch(r"qvg_[a-z0-9_]+", info.name), info.name
        assert (info.type == "counter") == info.name.endswith("_total"), info.name
        assert info.name.endswith(UNIT_SUFFIXES), f"{info.name}: say the unit"
        assert "_milliseconds" not in info.name and "_percent" not in info.name
        assert info.help.strip()


def test_required_metrics_exist():
    required = {
        "qvg_streams", "qvg_waiting_streams", "qvg_kv_pages", "qvg_kv_bytes",
        "qvg_kv_usage_ratio", "qvg_kv_effective_compression_ratio",
        "qvg_ladder_transitions_total", "qvg_preemptions_total", "qvg_requests_rejected_total",
        "qvg_frames_generated_total", "qvg_engine_step_duration_seconds",
        "qvg_time_to_first_frame_seconds", "qvg_inter_chunk_latency_seconds",
        "qvg_engine_steps_total", "qvg_engine_batch_streams",
    }  # fmt: skip
    assert required <= set(METRIC_NAMES)
    labels = {i.name: i.labels for i in describe()}
    assert labels["qvg_streams"] == ("state",)
    assert labels["qvg_kv_bytes"] == ("format", "tier")
    assert labels["qvg_ladder_transitions_total"] == ("rung",)


def test_labels_are_bounded():
    bounded = {"state", "format", "tier", "rung", "reason"}
    for info in describe():
        assert set(info.labels) <= bounded, info
    m = Metrics()
    with pytest.raises(ValueError, match="rung"):
        m.transition("stream-1234")
    with pytest.raises(ValueError, match="reason"):
        m.reject("because")
    with pytest.raises(ValueError, match="state"):
        m.set_streams({"stream-1234": 1})


def test_exposition_parses_with_every_metric_and_type():
    text, content_type = _exercised().exposition()
    assert content_type.startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(text.decode())}
    for info in describe():
        family = info.name.removesuffix("_total") if info.type == "counter" else info.name
        assert families[family].type == info.type, info.name
    rungs = {s.labels["rung"] for s in families["qvg_ladder_transitions"].samples}
    assert rungs == set(RUNGS)  # every rung exported from the start, so rate() sees the first
    reasons = {s.labels["reason"] for s in families["qvg_requests_rejected"].samples}
    assert reasons == set(REJECT_REASONS)
    states = {s.labels["state"]: s.value for s in families["qvg_streams"].samples}
    assert set(states) == set(STATES) and states["running"] == 3 and states["idle"] == 0


def test_kv_series_that_disappear_read_zero():
    m = Metrics()
    m.set_kv({("qvg-int4", "gpu"): 4}, {("qvg-int4", "gpu"): 400})
    m.set_kv({("qvg-int2", "gpu"): 4}, {("qvg-int2", "gpu"): 100})
    assert m.registry.get_sample_value("qvg_kv_pages", {"format": "qvg-int4", "tier": "gpu"}) == 0
    assert m.registry.get_sample_value("qvg_kv_bytes", {"format": "qvg-int2", "tier": "gpu"}) == 100


def test_registries_are_independent():
    a, b = Metrics(), Metrics(CollectorRegistry())
    a.frames.inc(5)
    assert b.registry.get_sample_value("qvg_frames_generated_total") == 0
    assert a.registry.get_sample_value("qvg_frames_generated_total") == 5


def test_latency_buckets_span_50ms_to_60s():
    m = Metrics()
    m.ttff.observe(0.01)
    text = m.exposition()[0].decode()
    pattern = r'qvg_time_to_first_frame_seconds_bucket\{le="([^"]+)"'
    les = [float(x) for x in re.findall(pattern, text) if x != "+Inf"]
    assert les[0] == pytest.approx(0.05) and les[-1] == pytest.approx(60.0)


def test_promtool_check_metrics_is_clean():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip(
            "promtool not installed (Debian package 'prometheus': apt-get install prometheus)"
        )
    text = _exercised().exposition()[0]
    res = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, timeout=30
    )
    assert res.returncode == 0 and not res.stdout.strip() and not res.stderr.strip(), (
        res.stdout.decode() + res.stderr.decode()
    )
