"""A real local Ray Serve app per test module (one Ray instance per module, torn down after)."""

from __future__ import annotations

import os
import socket
import time

import pytest

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")
requests = pytest.importorskip("requests")

KEYS = "key-acme:acme,key-globex:globex"
ACME = {"Authorization": "Bearer key-acme"}
GLOBEX = {"X-API-Key": "key-globex"}
# The tiny model with a 16 MiB arena: ~25 bf16 pages of one frame each; a chunk is 3 frames.
# Admission projects a stream at its full length (a 240-frame one ~28.5 MB): modules that run
# long streams side by side deploy with a larger arena.
BASE_ARGS = {
    "engine": {"model": "tiny", "device": "cpu", "kv_cache_memory_bytes": 16 << 20},
    "server": {"auth": True},
    "deployment": {"ray_actor_options": {"num_cpus": 0.5}},
    # Under a loaded 2-core CI box an engine replica's heartbeat can come late by seconds; at
    # the default 5 s the store would take it for dead and move its streams mid-test. The
    # durability tests (test_durability.py) set their own fast heartbeats and detection.
    "durability": {"dead_after_s": 30.0},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def merged(extra: dict) -> dict:
    out = {k: dict(v) for k, v in BASE_ARGS.items()}
    for section, values in extra.items():
        out.setdefault(section, {}).update(values)
    return out


class Serving:
    """One Ray instance serving apps; `deploy` adds an app under a route prefix."""

    def __init__(self) -> None:
        os.environ["QVG_API_KEYS"] = KEYS  # replicas inherit the driver's environment
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        if ray.is_initialized():  # a module before this one failed half-way: start clean
            ray.shutdown()
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        self.port = free_port()
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": self.port})
        except BaseException:
            ray.shutdown()  # never leave a half-started Ray to the next module
            raise

    def deploy(self, name: str, prefix: str, **extra) -> str:
        from qvg_serve.serve.app import build_app

        serve.run(build_app(merged(extra)), name=name, route_prefix=prefix)
        base = f"http://127.0.0.1:{self.port}{prefix.rstrip('/')}"
        wait_healthy(base)
        return base

    def close(self) -> None:
        serve.shutdown()
        ray.shutdown()


def wait_healthy(base: str, timeout: float = 60) -> None:
    end = time.time() + timeout
    while time.time() < end:
        try:
            if requests.get(f"{base}/v1/health", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{base} not healthy after {timeout} s")


@pytest.fixture(scope="module")
def serving():
    s = Serving()
    yield s
    s.close()


def create(base: str, headers=ACME, **body) -> requests.Response:
    body.setdefault("prompt", "a red star moving right on black")
    body.setdefault("frames", 12)
    return requests.post(f"{base}/v1/streams", json=body, headers=headers, timeout=30)


def sse_events(base: str, sid: str, headers=ACME, **params) -> list[tuple[str, dict]]:
    from qvg_serve.serve.frames import parse_sse

    params["format"] = "sse"
    r = requests.get(
        f"{base}/v1/streams/{sid}/frames", params=params, headers=headers, stream=True, timeout=120
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    return parse_sse(r.iter_lines(decode_unicode=True))


def wait_state(base: str, sid: str, states, headers=ACME, timeout: float = 120) -> dict:
    end = time.time() + timeout
    while time.time() < end:
        st = requests.get(f"{base}/v1/streams/{sid}", headers=headers, timeout=10).json()
        if st["state"] in states:
            return st
        time.sleep(0.1)
    raise TimeoutError(f"{sid} never reached {states}: {st}")
