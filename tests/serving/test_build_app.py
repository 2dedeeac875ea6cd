"""build_app validates its args before anything starts (no Ray cluster needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

pytest.importorskip("ray.serve")

from qvg_serve.serve.app import build_app  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ({"engine": {"seed": -1}}, "engine.seed"),
        ({"server": {"port": 0}}, "server.port"),
        ({"deployment": {"num_replicas": 0}}, "deployment.num_replicas"),
        ({"nope": 1}, "nope"),
        ({"scheduler": {"early_format": "fp8"}}, "early_format"),
    ],
)
def test_bad_args_fail_naming_the_field(args, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        build_app(args)


def test_serve_config_yaml_builds():
    doc = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    (app,) = doc["applications"]
    assert app["import_path"] == "qvg_serve.serve.app:build_app"
    built = build_app(app["args"])
    assert built is not None
    (dep,) = app["deployments"]
    assert dep["name"] == app["args"]["deployment"]["name"]
