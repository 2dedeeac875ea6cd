"""Bounded memory for ended streams' frames (issue 16, item 3), on a real local Ray Serve: past
`durability.frames_ram_mib` the oldest ended streams' frames move to disk and are still read
exactly once from any start; past `frames_disk_gib` the oldest are deleted (410, not 500)."""

from __future__ import annotations

import time

import pytest
import requests
from conftest import ACME, create, sse_events
from prometheus_client.parser import text_string_to_metric_families

ray = pytest.importorskip("ray")

FRAMES, SEED = 6, 5  # one seed: every stream has the same frames, so the same bytes


def run_to_end(base: str) -> tuple[str, list[tuple[int, str]]]:
    """A stream read live to its end: its id and its frames (index, JPEG base64)."""
    r = create(base, frames=FRAMES, seed=SEED)
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    events = sse_events(base, sid)
    assert events[-1][0] == "end", events[-3:]
    return sid, [(d["index"], d["jpeg"]) for e, d in events if e == "frame"]


def store_stats(app: str, until, timeout: float = 60) -> dict:
    from qvg_serve.serve.store import NAMESPACE, store_name

    store = ray.get_actor(store_name(app), namespace=NAMESPACE)
    end = time.time() + timeout
    while True:
        stats = ray.get(store.stats.remote())
        if until(stats) or time.time() > end:
            return stats
        time.sleep(0.2)


def frame_gauges(base: str, timeout: float = 30, until=None) -> dict[str, float]:
    """qvg_frames_held_bytes by tier, once a heartbeat has reported disk bytes (and `until`
    holds: a heartbeat taken while a stream moves can report its disk bytes before its RAM
    is released; the gauges lag the store by up to a heartbeat)."""
    end = time.time() + timeout
    while True:
        text = requests.get(f"{base}/metrics", timeout=30).text
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        got = {s.labels["tier"]: s.value for s in fams["qvg_frames_held_bytes"].samples}
        if (got.get("disk", 0) > 0 and (until is None or until(got))) or time.time() > end:
            return got
        time.sleep(0.2)


def test_ended_streams_past_the_ram_cap_are_read_from_disk_exactly_once(serving):
    cap_mib = 0.004  # ~4 KB: under one stream's frames, so every ended stream moves
    base = serving.deploy(
        "fbram", "/fbram", durability={"frames_ram_mib": cap_mib, "retention_s": 120}
    )
    runs = [run_to_end(base) for _ in range(3)]
    stats = store_stats("fbram", lambda s: s["on_disk"] == 3)
    assert stats["on_disk"] == 3 and stats["ram_ended_bytes"] <= cap_mib * (1 << 20), stats
    assert stats["disk_bytes"] > 0 and stats["deleted"] == 0, stats
    for sid, live in runs:
        assert [i for i, _ in live] == list(range(FRAMES))
        again = [(d["index"], d["jpeg"]) for e, d in sse_events(base, sid) if e == "frame"]
        assert again == live  # every frame once, byte for byte, from disk
        later = sse_events(base, sid, start=4)
        assert [d["index"] for e, d in later if e == "frame"] == [4, 5]
        resumed = requests.get(
            f"{base}/v1/streams/{sid}/frames",
            params={"format": "sse"},
            headers={**ACME, "Last-Event-ID": "2"},
            timeout=60,
        )
        assert resumed.text.count("event: frame") == 3 and "id: 3\n" in resumed.text
        mjpeg = requests.get(f"{base}/v1/streams/{sid}/frames", headers=ACME, timeout=60)
        assert mjpeg.content.count(b"Content-Type: image/jpeg") == FRAMES
    video = requests.get(f"{base}/v1/streams/{runs[0][0]}/video.mp4", headers=ACME, timeout=120)
    assert video.status_code == 200 and video.content[4:8] == b"ftyp"
    gauges = frame_gauges(base, until=lambda g: g.get("ram", 0) <= cap_mib * (1 << 20))
    assert gauges["disk"] > 0 and gauges["ram"] <= cap_mib * (1 << 20), gauges


def test_the_disk_cap_deletes_the_oldest_ended_stream_with_410(serving):
    probe = serving.deploy("fbsize", "/fbsize", durability={"frames_ram_mib": 0})
    run_to_end(probe)
    one = store_stats("fbsize", lambda s: s["on_disk"] == 1)["disk_bytes"]
    assert one > 0
    disk_gib = 1.5 * one / (1 << 30)  # room for one stream, not two
    durability = {"frames_ram_mib": 0, "frames_disk_gib": disk_gib}
    base = serving.deploy("fbdisk", "/fbdisk", durability=durability)
    oldest, _ = run_to_end(base)
    first, _ = run_to_end(base)
    second, live = run_to_end(base)
    stats = store_stats("fbdisk", lambda s: s["deleted"] == 2 and s["on_disk"] == 1)
    assert stats["deleted"] == 2 and stats["on_disk"] == 1, stats
    assert stats["disk_bytes"] <= disk_gib * (1 << 30), stats
    for sid in (oldest, first):  # the oldest, in turn
        for path in ("", "/frames", "/video.mp4"):
            r = requests.get(f"{base}/v1/streams/{sid}{path}", headers=ACME, timeout=30)
            assert r.status_code == 410, (path, r.status_code, r.text)
            err = r.json()["error"]
            assert err["code"] == "gone" and "frames_disk_gib" in err["message"], err
    again = [(d["index"], d["jpeg"]) for e, d in sse_events(base, second) if e == "frame"]
    assert again == live
