"""/metrics is valid exposition (promtool) and a real Prometheus server scrapes it."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest
import requests
from conftest import create, free_port, sse_events


@pytest.fixture(scope="module")
def base(serving):
    b = serving.deploy("prom", "/", server={"auth": False})
    sse_events(b, create(b, headers={}, frames=12).json()["id"], headers={})
    return b


def test_promtool_check_metrics_clean(base):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package `prometheus`)")
    text = requests.get(f"{base}/metrics").text
    done = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "" and done.stderr.strip() == ""


def test_prometheus_server_scrapes_replica(base, tmp_path):
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus server not installed (Debian package `prometheus`)")
    target = base.removeprefix("http://")
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: qvg\n    metrics_path: /metrics\n    static_configs:\n"
        f"      - targets: ['{target}']\n"
    )
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        result = _query_until(port, "sum(qvg_frames_generated_total)", timeout=60)
        assert float(result[0]["value"][1]) >= 12
        up = _query_until(port, 'up{job="qvg"}', timeout=10)
        assert up[0]["value"][1] == "1"
        cap = _query_until(port, 'qvg_kv_capacity_bytes{tier="gpu"}', timeout=10)
        assert float(cap[0]["value"][1]) == 16 << 20 or float(cap[0]["value"][1]) > 0
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _query_until(port: int, query: str, timeout: float) -> list:
    end = time.time() + timeout
    while time.time() < end:
        try:
            r = requests.get(
                f"http://127.0.0.1:{port}/api/v1/query", params={"query": query}, timeout=5
            )
            result = r.json()["data"]["result"]
            if result:
                return result
        except (requests.RequestException, KeyError, ValueError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"prometheus never answered {query!r}")
