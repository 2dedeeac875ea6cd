"""Tenant page caps over two engine replicas (serve/quota.py): acme, capped at CAP GPU pages,
never holds more than CAP summed over both replicas while its streams run on both; globex,
uncapped, is not slowed or degraded by it."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import ray
import requests
from conftest import ACME, GLOBEX, create, wait_state

APP, CAP = "caps", 12
"""12 pages: a stream of 24 frames holds 6 when complete; the cap holds two of acme's four at
once over both replicas (with a cap per replica, two on each: 24)."""


@pytest.fixture(scope="module")
def capped(serving):
    return serving.deploy(
        APP,
        "/caps",
        deployment={"num_replicas": 2},
        scheduler={"tenants": {"acme": {"page_cap": CAP}}},
        engine={"kv_cache_memory_bytes": 32 << 20},
        durability={"heartbeat_s": 0.2, "dead_after_s": 30.0},
    )


def _store():
    from qvg_serve.serve.store import NAMESPACE, store_name

    return ray.get_actor(store_name(APP), namespace=NAMESPACE)


def test_a_capped_tenant_stays_under_its_cap_summed_over_both_replicas(capped):
    with ThreadPoolExecutor(8) as pool:
        acme = list(pool.map(lambda i: create(capped, frames=24, seed=i), range(4)))
        globex = list(pool.map(lambda i: create(capped, GLOBEX, frames=24, seed=i), range(2)))
    assert [r.status_code for r in acme + globex] == [201] * 6, [r.text for r in acme + globex]
    acme_ids = [r.json()["id"] for r in acme]
    homes = {sid.rpartition("-")[0] for sid in acme_ids}
    assert len(homes) == 2, acme_ids  # placement put acme's streams on both replicas
    store, seen = _store(), {h: 0 for h in homes}
    end = time.time() + 240
    while time.time() < end:
        q = ray.get(store.quota.remote()).get("acme", {"by_replica": {}, "peak_held": 0})
        for h, n in q["by_replica"].items():
            seen[h] = max(seen.get(h, 0), n)
        states = [_state(capped, sid) for sid in acme_ids]
        if all(s in _ENDED for s in states):
            break
        time.sleep(0.2)
    q = ray.get(store.quota.remote())["acme"]
    assert all(seen[h] > 0 for h in homes), seen  # the cap was shared by both replicas
    assert CAP // 2 < q["peak_held"] <= CAP, q  # pressed up to the cap, never past it
    assert q["leased"] <= CAP
    for sid in acme_ids:  # within the cap its streams still finish (degraded at worst)
        st = wait_state(capped, sid, _ENDED, timeout=60)
        assert st["state"] == "finished", (st["end_reason"], st["history"][-4:])
    for r in globex:
        st = wait_state(capped, r.json()["id"], _ENDED, GLOBEX, timeout=60)
        assert st["state"] == "finished" and not st["degraded"] and st["preemptions"] == 0


def _state(base: str, sid: str) -> str:
    return requests.get(f"{base}/v1/streams/{sid}", headers=ACME, timeout=30).json()["state"]


_ENDED = {"finished", "cancelled", "failed"}
