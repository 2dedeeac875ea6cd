"""The ingress's own logic on a fake engine handle (no Ray): a refusal retried on another
replica, draining answers 503, capacity summed over every replica."""

from __future__ import annotations

import pytest

pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from qvg_serve.serve.api import build_api  # noqa: E402
from qvg_serve.serve.config import AppConfig  # noqa: E402
from qvg_serve.serve.drain import Draining  # noqa: E402


class Method:
    def __init__(self, fn) -> None:
        self.fn, self.calls = fn, []

    def remote(self, *args, **kw):
        self.calls.append(kw)

        async def answer():
            return self.fn(*args, **kw)

        return answer()


class FakeEngine:
    """Replicas by id; `refuse` names those answering create with kv_pressure."""

    def __init__(self, ids, refuse=()) -> None:
        self.ids, self.refuse = list(ids), set(refuse)
        self.create = Method(self._create)
        self.roster = Method(lambda roster: list(self.ids))
        self.capacity = Method(self._capacity)
        self.reject = Method(lambda reason: None)

    def _create(self, avoid, **kw):
        rid = (
            next(r for r in self.ids if r not in avoid) if set(avoid) < set(self.ids) else avoid[0]
        )
        if rid in self.refuse:
            return {"id": f"{rid}-1", "accepted": False, "reason": "kv_pressure",
                    "retry_after_s": 2.0}  # fmt: skip
        return {"id": f"{rid}-7", "accepted": True, "reason": None, "retry_after_s": 0.0}

    def _capacity(self, replica, frames=None):
        fit = 2 if frames is None else 120 // frames  # longer streams: fewer fit
        return {"replica": replica, "free_bytes": 10, "total_bytes": 30, "streams_that_fit": fit,
                "live_streams": 1}  # fmt: skip


def client(engine, drain=None, **server) -> TestClient:
    cfg = AppConfig.from_args({"server": {"auth": False, **server}})
    return TestClient(build_api(cfg, engine, None, environ={}, drain=drain))  # no store: the
    # ingress reaches it only for per-stream calls, none of which these tests make


def post(c: TestClient):
    return c.post("/v1/streams", json={"prompt": "a red fox", "frames": 12})


def test_a_refusal_is_retried_on_another_replica():
    engine = FakeEngine(["a", "b"], refuse={"a"})
    r = post(client(engine))
    assert r.status_code == 201 and r.json()["id"] == "b-7"
    assert [c["avoid"] for c in engine.create.calls] == [[], ["a"]]


def test_all_refusing_gives_429_after_one_try_each():
    engine = FakeEngine(["a", "b", "c"], refuse={"a", "b", "c"})
    r = post(client(engine, create_tries=5))
    assert r.status_code == 429 and r.headers["Retry-After"] == "2"
    assert [c["avoid"] for c in engine.create.calls] == [[], ["a"], ["a", "b"]]


def test_create_tries_caps_the_retries():
    engine = FakeEngine(["a", "b", "c"], refuse={"a", "b", "c"})
    assert post(client(engine, create_tries=2)).status_code == 429
    assert len(engine.create.calls) == 2


def test_one_replica_is_asked_once():
    engine = FakeEngine(["a"], refuse={"a"})
    assert post(client(engine)).status_code == 429 and len(engine.create.calls) == 1


def test_draining_answers_503_with_retry_after_and_creates_nothing():
    engine = FakeEngine(["a"])
    r = post(client(engine, drain=Draining(on=True, retry_after_s=7)))
    assert r.status_code == 503 and r.headers["Retry-After"] == "7"
    assert r.json()["error"]["code"] == "draining" and engine.create.calls == []


def test_capacity_sums_every_replica():
    engine = FakeEngine(["a", "b", "c"])
    cap = client(engine).get("/v1/capacity").json()
    assert [r["replica"] for r in cap["replicas"]] == ["a", "b", "c"]
    assert (cap["free_bytes"], cap["total_bytes"], cap["streams_that_fit"]) == (30, 90, 6)
    assert [c["replica"] for c in engine.capacity.calls] == ["a", "b", "c"]


def test_capacity_counts_streams_of_the_asked_length():
    engine = FakeEngine(["a", "b"])
    c = client(engine)
    assert c.get("/v1/capacity?frames=40").json()["streams_that_fit"] == 6
    assert [k.get("frames") for k in engine.capacity.calls] == [40, 40]
    assert c.get("/v1/capacity?frames=0").status_code == 422
