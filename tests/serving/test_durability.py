"""Streams survive a replica's death and a redeploy (issue 15), on one two-replica app:
kill -9 of the replica holding a generating stream, a tunable change that replaces no replica,
a scale-down that drains a replica, and the store freeing ended streams."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest
import requests
from conftest import ACME, create, merged, wait_healthy

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

APP, PREFIX = "dur", "/dur"
DURABILITY = {"heartbeat_s": 0.2, "dead_after_s": 1.5, "retention_s": 6.0, "handover_timeout_s": 10}
FRAMES = 36  # 12 chunks of the tiny model: long enough to kill mid-stream


def deploy(serving, **extra):
    from qvg_serve.serve.app import build_app

    extra.setdefault("deployment", {"num_replicas": 2})
    serve.run(build_app(merged({"durability": DURABILITY, **extra})), name=APP, route_prefix=PREFIX)
    base = f"http://127.0.0.1:{serving.port}{PREFIX}"
    wait_healthy(base)
    return base


@pytest.fixture(scope="module")
def base(serving):
    return deploy(serving)


def store():
    from qvg_serve.serve.store import NAMESPACE, store_name

    return ray.get_actor(store_name(APP), namespace=NAMESPACE)


def home_of(sid: str) -> str:
    return ray.get(store().route.remote(sid, "acme"))["home"]


def replicas(n: int = 2) -> dict[str, tuple[int, str]]:
    """replica id -> (pid, tunables hash) of the engine replicas answering health."""
    handle = serve.get_deployment_handle("QVGEngine", APP)
    seen: dict[str, tuple[int, str]] = {}
    for _ in range(60):
        got = handle.health.remote().result(timeout_s=30)
        seen[got["replica"]] = (got["pid"], got["tunables"])
        if len(seen) >= n:
            break
    return seen


class Reader(threading.Thread):
    """An SSE client: frames by index, until the end or `stop_after` frames."""

    def __init__(self, base: str, sid: str, stop_after: int | None = None, last: int | None = None):
        super().__init__(daemon=True)
        self.url, self.stop_after, self.last = f"{base}/v1/streams/{sid}/frames", stop_after, last
        self.frames: list[int] = []
        self.events: list[str] = []
        self.ids: list[str] = []
        self.status = 0

    def run(self) -> None:
        """Reads until the end event, reconnecting with Last-Event-ID when the connection is
        cut (what EventSource does: an ingress replaced by a redeploy cuts it)."""
        for _ in range(10):
            try:
                if self._read():
                    return
            except requests.RequestException:
                self.events.append("cut")

    def _read(self) -> bool:
        headers = dict(ACME)
        last = self.frames[-1] if self.frames else self.last
        if last is not None:
            headers["Last-Event-ID"] = str(last)
        r = requests.get(
            self.url, params={"format": "sse"}, headers=headers, stream=True, timeout=120
        )
        self.status = r.status_code
        event = "message"
        for line in r.iter_lines(decode_unicode=True):
            if line.startswith("id:"):
                self.ids.append(line[3:].strip())
            elif line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                self.events.append(event)
                if event == "frame":
                    self.frames.append(json.loads(line[5:])["index"])
                if event == "end":
                    return True
                if self.stop_after is not None and len(self.frames) >= self.stop_after:
                    r.close()
                    return True
        return r.status_code != 200


def statuses_while(base: str, sid: str, until: threading.Thread) -> set[int]:
    codes = set()
    while until.is_alive():
        codes.add(requests.get(f"{base}/v1/streams/{sid}", headers=ACME, timeout=30).status_code)
        time.sleep(0.1)
    return codes


def test_kill_9_of_the_home_replica_loses_no_frame(base):
    sid = create(base, frames=FRAMES, seed=11).json()["id"]
    first = Reader(base, sid, stop_after=20)
    first.start()
    while len(first.frames) < 4 and first.is_alive():
        time.sleep(0.05)
    victim = home_of(sid)
    pid = replicas()[victim][0]
    os.kill(pid, signal.SIGKILL)
    killed = time.time()
    created = None
    while created is None and time.time() - killed < 10:
        r = create(base, frames=3, seed=1)
        assert r.status_code in (201, 503), r.text
        created = r if r.status_code == 201 else None
    assert created is not None, "no create succeeded within 10 s of the kill"
    codes = statuses_while(base, sid, first)
    assert codes <= {200, 503}, codes  # never 404 while it moves
    assert home_of(sid) != victim
    rest = Reader(base, sid, last=first.frames[-1])
    rest.run()
    got = first.frames + rest.frames
    assert got == list(range(FRAMES)), got  # every frame exactly once, in order
    assert rest.events[-1] == "end" and first.ids[:3] == ["0", "1", "2"]
    st = requests.get(f"{base}/v1/streams/{sid}", headers=ACME, timeout=30).json()
    assert st["state"] == "finished" and st["end_reason"] == "completed", st
    assert st["frames_done"] == FRAMES


def test_a_tunable_change_is_applied_in_place(base):
    """reconfigure() (what Serve calls when only user_config changes) swaps the scheduler's
    tunables on the live replica: same replica, same process. (A config deploy keeps args,
    hence Serve's code version, unchanged; `serve.run` from Python always makes a new one.)"""
    before = replicas()
    handle = serve.get_deployment_handle("QVGEngine", APP)
    handle.reconfigure.remote({"scheduler": {"max_waiting": 17}}).result(timeout_s=60)
    after = replicas()
    assert set(after) == set(before)  # same replicas...
    assert all(after[r][0] == before[r][0] for r in before)  # ...same processes
    assert sum(after[r][1] != before[r][1] for r in before) == 1  # new tunables on one


def wait_replicas(n: int, timeout_s: float = 120.0) -> None:
    """Until n engine replicas answer health: the kill -9 test's replacement replica may
    still be starting, and then every create lands on the one that runs."""
    end = time.time() + timeout_s
    while len(replicas(n)) < n:
        assert time.time() < end, f"fewer than {n} engine replicas after {timeout_s} s"
        time.sleep(0.5)


def test_a_replaced_replica_hands_its_streams_over(serving, base):
    wait_replicas(2)
    ids, homes = [], set()
    for seed in range(12):  # one stream on each replica
        sid = create(base, frames=FRAMES, seed=seed).json()["id"]
        ids.append(sid)
        homes.add(home_of(sid))
        if len(homes) == 2:
            break
    assert len(homes) == 2
    readers = [Reader(base, sid) for sid in ids]
    for reader in readers:
        reader.start()
    deploy(serving, deployment={"num_replicas": 1})  # replaces both replicas: both drain
    for sid, reader in zip(ids, readers, strict=True):
        reader.join(timeout=300)
        where = ray.get(store().route.remote(sid, "acme"))
        assert reader.frames == list(range(FRAMES)), (sid, reader.frames, reader.events, where)
        assert reader.events[-1] == "end", (sid, reader.events[-3:])
    assert not set(replicas(1)) & homes


def test_ended_streams_are_released_from_the_store(base):
    sid = create(base, frames=6, seed=3).json()["id"]
    Reader(base, sid).run()
    held = ray.get(store().stats.remote())
    assert held["objects"] > 0 and held["bytes"] > 0
    end = time.time() + 60
    while time.time() < end:
        stats = ray.get(store().stats.remote())
        if stats["streams"] == 0:
            break
        time.sleep(0.5)
    assert stats["streams"] == 0 and stats["objects"] == 0 and stats["bytes"] == 0, stats
    assert requests.get(f"{base}/v1/streams/{sid}", headers=ACME, timeout=30).status_code == 404


def test_actor_deaths_are_recognised_without_importing_ray_in_the_api():
    from ray.exceptions import ActorDiedError, ActorUnavailableError

    from qvg_serve.serve.errors import actor_died

    assert actor_died(ActorDiedError()) and actor_died(ActorUnavailableError("x", None))
    assert not actor_died(ValueError("RayActorError"))
