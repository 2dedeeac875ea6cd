"""Two engine replicas: every request for a stream reaches the replica that holds it; a
third app with max_waiting=1 answers 429 + Retry-After under a burst."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from conftest import ACME, create, sse_events, wait_state


@pytest.fixture(scope="module")
def two(serving):
    return serving.deploy("two", "/two", deployment={"num_replicas": 2})


def test_streams_spread_over_both_replicas_and_stay_there(two):
    ids = [create(two, frames=12, seed=i).json()["id"] for i in range(12)]
    replicas = {sid.rpartition("-")[0] for sid in ids}
    assert len(replicas) == 2, ids  # 12 creations by power-of-two choices: both replicas used
    for sid in ids:  # every per-stream call lands on its owner (else: 404)
        for _ in range(3):
            assert requests.get(f"{two}/v1/streams/{sid}", headers=ACME).status_code == 200
        frames = [d for e, d in sse_events(two, sid) if e == "frame"]
        assert len(frames) == 12
        assert requests.post(
            f"{two}/v1/streams/{sid}/actions",
            json={"prompt": "a green square rotating on grey"},
            headers=ACME,
        ).status_code in (200, 409)
        assert requests.get(f"{two}/v1/streams/{sid}/video.mp4", headers=ACME).status_code == 200


def test_cancel_reaches_owner(two):
    ids = [create(two, frames=480, seed=i).json()["id"] for i in range(4)]
    for sid in ids:
        r = requests.delete(f"{two}/v1/streams/{sid}", headers=ACME)
        assert r.status_code == 200 and r.json()["pages_held"] == 0
        assert wait_state(two, sid, {"cancelled"})["end_reason"] == "cancelled"


def test_burst_over_the_queue_gets_429_with_retry_after(serving):
    base = serving.deploy("pressure", "/p", scheduler={"max_waiting": 1, "retry_after_s": 3})
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda i: create(base, frames=240, seed=i), range(16)))
    codes = [r.status_code for r in answers]
    assert 201 in codes and 429 in codes, codes
    refused = next(r for r in answers if r.status_code == 429)
    assert refused.headers["Retry-After"] == "3"
    assert refused.json()["error"]["code"] == "queue_full"
    for r in answers:
        if r.status_code == 201:
            requests.delete(f"{base}/v1/streams/{r.json()['id']}", headers=ACME)
    serving_delete = requests.get(f"{base}/metrics").text
    assert 'qvg_requests_rejected_total{reason="queue_full"}' in serving_delete


def test_a_burst_of_creates_splits_evenly_and_capacity_lists_both(two):
    """Placement by free KV (placement.py): 12 equal streams created at once land within
    1.5x of an even split (<= 9 of 12 on a replica; random placement often gives 10+)."""
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda i: create(two, frames=480, seed=i), range(12)))
    assert [r.status_code for r in answers] == [201] * 12, [r.text for r in answers]
    ids = [r.json()["id"] for r in answers]
    per_replica = Counter(sid.rpartition("-")[0] for sid in ids)
    cap = requests.get(f"{two}/v1/capacity", headers=ACME, timeout=30).json()
    for sid in ids:
        requests.delete(f"{two}/v1/streams/{sid}", headers=ACME, timeout=30)
    assert len(per_replica) == 2 and max(per_replica.values()) <= 9, per_replica
    assert sorted(r["replica"] for r in cap["replicas"]) == sorted(per_replica)
    assert cap["total_bytes"] == sum(r["total_bytes"] for r in cap["replicas"]) > 0
    assert cap["free_bytes"] == sum(r["free_bytes"] for r in cap["replicas"])
