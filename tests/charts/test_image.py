"""The Dockerfile, the chart and the package agree: uid, Ray version, image tag, package data."""

from __future__ import annotations

import fnmatch
import re
import subprocess
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "qvg-serve"
DOCKERFILE = (ROOT / "Dockerfile").read_text()
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def instructions(name: str) -> list[str]:
    return re.findall(rf"^{name}\s+(.+)$", DOCKERFILE, flags=re.MULTILINE)


def test_image_user_is_the_charts_non_root_uid():
    ctx = VALUES["podSecurityContext"]
    users = instructions("USER")
    assert users, "the Dockerfile sets no USER: the image would run as root"
    assert users[-1].strip() == f"{ctx['runAsUser']}:{ctx['runAsGroup']}"
    assert ctx["runAsUser"] != 0 and ctx["runAsNonRoot"] is True


def test_base_image_ray_matches_the_chart_and_the_pin():
    (base,) = [a for a in instructions("ARG") if a.startswith("RAY_IMAGE=")]
    ray_version = re.search(r"rayproject/ray:(\d+\.\d+\.\d+)-py311", base).group(1)
    assert ray_version == VALUES["rayVersion"]
    pins = [
        d for d in PYPROJECT["project"]["optional-dependencies"]["serve"] if d.startswith("ray[")
    ]
    (series,) = re.findall(r"==(\d+\.\d+)\.\*", pins[0])
    assert ray_version.startswith(series + ".")
    assert PYPROJECT["project"]["requires-python"] == ">=3.11"  # the base image's py311


def test_default_image_tag_is_the_package_version():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    version = PYPROJECT["project"]["version"]
    assert VALUES["image"]["tag"] == "" and chart["appVersion"] == version  # tag "" -> appVersion
    assert f'org.opencontainers.image.version="{version}"' in DOCKERFILE
    assert f"qvg-serve:{version}" in DOCKERFILE  # the build command it documents


def test_image_installs_the_serve_extra_and_copies_every_package():
    assert re.search(r"\.whl\)\[serve\]", DOCKERFILE)
    for package in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]:
        assert f"COPY --chown=1000:100 {package.rstrip('*')} " in DOCKERFILE, package


def test_wheel_ships_the_package_data():
    """Every tracked non-Python file of qvg_serve (the tiny weights) is in package-data."""
    tracked = subprocess.run(
        ["git", "ls-files", "qvg_serve"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    data = [f.removeprefix("qvg_serve/") for f in tracked if not f.endswith(".py")]
    patterns = PYPROJECT["tool"]["setuptools"]["package-data"]["qvg_serve"]
    assert data
    for path in data:
        assert any(fnmatch.fnmatch(path, p) for p in patterns), f"{path} is not in the wheel"
