"""Two engine replicas: every request for a stream reaches the replica that holds it; a
third app with max_waiting=1 answers 429 + Retry-After under a burst."""

from __future__ import annotations

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
