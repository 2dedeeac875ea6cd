"""values.schema.json: generated from AppConfig's schema plus the chart's keys; Helm enforces it."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "qvg-serve"
helm = pytest.importorskip("helm_python", reason="helm-python-sdk has wheels for Linux x86_64 only")


def generator():
    spec = importlib.util.spec_from_file_location(
        "gen_values_schema", ROOT / "tools" / "gen_values_schema.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def chart():
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def test_committed_schema_is_the_generated_one():
    committed = (CHART / "values.schema.json").read_text()
    assert committed == generator().render(), "stale: run python tools/gen_values_schema.py"


def test_config_section_is_app_config_schema():
    from qvg_serve.serve.config import AppConfig

    schema = json.loads((CHART / "values.schema.json").read_text())
    app = AppConfig.json_schema()
    assert schema["$defs"] == app["$defs"]
    assert schema["properties"]["config"]["properties"] == app["properties"]
    assert schema["additionalProperties"] is False


TYPOS = [
    ({"config": {"engine": {"modle": "tiny"}}}, "modle"),
    ({"config": {"scheduler": {"max_batch_stream": 4}}}, "max_batch_stream"),
    ({"config": {"server": {"auth": "yes"}}}, "auth"),
    ({"config": {"deployment": {"ray_actor_options": {"num_gpu": 1}}}}, "num_gpu"),
    ({"ingress": {"enabeld": True}}, "enabeld"),
    ({"worker": {"replicas": 2}}, "replicas"),
    ({"imag": {"tag": "x"}}, "imag"),
    ({"podDisruptionBudget": {"enabled": "yes"}}, "enabled"),
    ({"upgradeStrategy": {"type": "Rolling"}}, "type"),
]


@pytest.mark.parametrize(("values", "word"), TYPOS, ids=[w for _, w in TYPOS])
def test_a_typo_fails_at_render_and_lint(chart, values, word):
    with pytest.raises(helm.HelmValuesError, match=word):
        chart.render(values=values, name="qvg", namespace="serving")
    report = helm.lint(CHART, values, strict=True)
    assert any(word in e for e in report["errors"]), report


def test_real_values_pass_the_schema(chart):
    gpu = yaml.safe_load((CHART / "values-gpu.yaml").read_text())
    for values in (None, gpu, {"config": {"deployment": {"autoscaling_config": None}}}):
        chart.render(values=copy.deepcopy(values), name="qvg", namespace="serving")
    kubernetes_objects = {
        "worker": {"resources": {"limits": {"ephemeral-storage": "20Gi"}}},
        "securityContext": {"capabilities": {"drop": ["ALL"]}, "runAsUser": 1000},
        "podDisruptionBudget": {"maxUnavailable": "50%"},
    }
    chart.render(values=kubernetes_objects, name="qvg", namespace="serving")
