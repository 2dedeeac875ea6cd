"""The HTTP API against a real local Ray Serve app (tiny model, CPU, auth on)."""

from __future__ import annotations

import io
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from conftest import ACME, GLOBEX, create, sse_events, wait_state

from qvg_serve.serve.frames import parse_mjpeg


@pytest.fixture(scope="module")
def base(serving):
    # 96 MiB: admission projects each stream at its full length (issue 13); a 240-frame tiny
    # stream is ~28.5 MB at INT2 past its bf16 sink + window, and the disconnect test runs two
    # at once beside short ones
    return serving.deploy("api", "/", engine={"kv_cache_memory_bytes": 96 << 20})


def test_create_returns_201_with_id_and_urls(base):
    r = create(base, frames=12, seed=3, priority="high", target_fps=16)
    assert r.status_code == 201, r.text
    body = r.json()
    assert set(body["urls"]) == {"status", "frames", "sse", "video", "actions"}
    assert body["urls"]["status"].endswith(f"/v1/streams/{body['id']}")


def test_sse_frames_parse_and_end(base):
    sid = create(base, frames=20).json()["id"]
    events = sse_events(base, sid)
    frames = [d for e, d in events if e == "frame"]
    assert [f["index"] for f in frames] == list(range(20))
    assert events[-1] == ("end", {"reason": "completed", "frames": 20})
    import base64

    from PIL import Image

    img = Image.open(io.BytesIO(base64.b64decode(frames[0]["jpeg"])))
    assert img.format == "JPEG" and img.size == (frames[0]["width"], frames[0]["height"])


def test_mjpeg_parses_into_jpegs(base):
    sid = create(base, frames=12).json()["id"]
    r = requests.get(f"{base}/v1/streams/{sid}/frames", headers=ACME, timeout=120)
    assert r.status_code == 200
    assert r.headers["content-type"] == "multipart/x-mixed-replace; boundary=frame"
    jpegs = parse_mjpeg(r.content)
    assert len(jpegs) == 12
    assert all(j[:3] == b"\xff\xd8\xff" and j[-2:] == b"\xff\xd9" for j in jpegs)
    assert r.content.endswith(b"--frame--\r\n")


def test_late_reader_replays_from_start_parameter(base):
    sid = create(base, frames=12).json()["id"]
    wait_state(base, sid, {"finished"})
    frames = [d for e, d in sse_events(base, sid, start=5) if e == "frame"]
    assert [f["index"] for f in frames] == list(range(5, 12))


def test_status_reports_pages_by_format_and_tier(base):
    sid = create(base, frames=48).json()["id"]
    seen = None
    for _ in range(400):
        st = requests.get(f"{base}/v1/streams/{sid}", headers=ACME, timeout=10).json()
        if st["pages"]:
            seen = st
            break
    assert seen is not None, "status never showed a page"
    assert seen["state"] in {"running", "waiting", "idle", "preempted"}
    fmt, tiers = next(iter(seen["pages"].items()))
    assert tiers["gpu"] >= 1 and seen["bytes"][fmt]["gpu"] > 0
    done = wait_state(base, sid, {"finished"})
    assert done["frames_done"] == 48 and done["end_reason"] == "completed"
    assert done["pages"] == {}


def test_video_mp4_when_done_and_409_before(base):
    sid = create(base, frames=48).json()["id"]
    early = requests.get(f"{base}/v1/streams/{sid}/video.mp4", headers=ACME, timeout=30)
    assert early.status_code == 409 and early.json()["error"]["field"] == "stream_id"
    wait_state(base, sid, {"finished"})
    r = requests.get(f"{base}/v1/streams/{sid}/video.mp4", headers=ACME, timeout=60)
    assert r.status_code == 200 and r.headers["content-type"] == "video/mp4"
    import av

    with av.open(io.BytesIO(r.content)) as c:
        assert sum(1 for _ in c.decode(video=0)) == 48


def test_action_applies_to_a_live_stream(base):
    sid = create(base, frames=96).json()["id"]
    r = requests.post(
        f"{base}/v1/streams/{sid}/actions",
        json={"prompt": "a blue circle bouncing on grey"},
        headers=ACME,
        timeout=30,
    )
    assert r.status_code == 200 and r.json()["applied"] is True
    assert (
        requests.get(f"{base}/v1/streams/{sid}", headers=ACME).json()["prompt"]
        == "a blue circle bouncing on grey"
    )
    requests.delete(f"{base}/v1/streams/{sid}", headers=ACME)
    late = requests.post(
        f"{base}/v1/streams/{sid}/actions",
        json={"prompt": "a red star rotating on black"},
        headers=ACME,
    )
    assert late.status_code == 409


def test_cancel_frees_pages_at_once(base):
    sid = create(base, frames=480).json()["id"]
    for _ in range(400):
        if requests.get(f"{base}/v1/streams/{sid}", headers=ACME).json()["pages"]:
            break
    r = requests.delete(f"{base}/v1/streams/{sid}", headers=ACME, timeout=30)
    assert r.status_code == 200
    assert r.json() == {"id": sid, "cancelled": True, "pages_held": 0}
    st = requests.get(f"{base}/v1/streams/{sid}", headers=ACME).json()
    assert st["state"] == "cancelled" and st["pages"] == {} and st["end_reason"] == "cancelled"
    ended = sse_events(base, sid)[-1]
    assert ended[0] == "end" and ended[1]["reason"] == "cancelled"


def test_disconnect_keeps_stream_unless_asked(base):
    keep = create(base, frames=240).json()["id"]
    drop = create(base, frames=240).json()["id"]
    for sid, flag in ((keep, "false"), (drop, "true")):
        r = requests.get(
            f"{base}/v1/streams/{sid}/frames",
            params={"format": "sse", "cancel_on_disconnect": flag},
            headers=ACME,
            stream=True,
            timeout=60,
        )
        try:
            next(r.iter_lines())  # the first frame arrived: now hang up
        finally:
            r.close()
    try:
        wait_state(base, drop, {"cancelled"})
        st = requests.get(f"{base}/v1/streams/{keep}", headers=ACME).json()
        assert st["state"] != "cancelled"
    finally:  # never leave a long stream holding the module's app
        for sid in (keep, drop):
            requests.delete(f"{base}/v1/streams/{sid}", headers=ACME)


def test_other_tenant_gets_404_everywhere(base):
    sid = create(base).json()["id"]
    for method, path, body in (
        ("get", "", None),
        ("get", "/frames", None),
        ("get", "/video.mp4", None),
        ("post", "/actions", {"prompt": "x"}),
        ("delete", "", None),
    ):
        r = requests.request(method, f"{base}/v1/streams/{sid}{path}", json=body, headers=GLOBEX)
        assert r.status_code == 404, (method, path, r.text)
        assert r.json()["error"]["field"] == "stream_id"
    assert requests.get(f"{base}/v1/streams/{sid}", headers=ACME).status_code == 200


@pytest.mark.parametrize("sid", ["nope", "abc-1", "zzzzzzzz-999999", "a-b-c", "-1"])
def test_unknown_stream_404(base, sid):
    r = requests.get(f"{base}/v1/streams/{sid}", headers=ACME)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"X-API-Key": ""}])
def test_missing_or_bad_key_401(base, headers):
    r = requests.post(f"{base}/v1/streams", json={"prompt": "x"}, headers=headers)
    assert r.status_code == 401 and r.json()["error"]["field"] == "authorization"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"frames": 12}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x" * 2001}, "prompt"),
        ({"prompt": "x", "frames": 0}, "frames"),
        ({"prompt": "x", "frames": "many"}, "frames"),
        ({"prompt": "x", "frames": 100_000}, "frames"),
        ({"prompt": "x", "seed": -1}, "seed"),
        ({"prompt": "x", "priority": "urgent"}, "priority"),
        ({"prompt": "x", "target_fps": 0}, "target_fps"),
        ({"prompt": "x", "colour": "red"}, "colour"),
        ([1, 2], "body"),
    ],
)
def test_bad_create_bodies_name_the_field(base, body, field):
    r = requests.post(f"{base}/v1/streams", json=body, headers=ACME)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == field


def test_malformed_json_400(base):
    r = requests.post(
        f"{base}/v1/streams",
        data=b"{not json",
        headers={**ACME, "Content-Type": "application/json"},
    )
    assert r.status_code == 400 and r.json()["error"]["field"] == "body"


def test_bad_query_params_422(base):
    sid = create(base).json()["id"]
    for params, field in (
        ({"format": "gif"}, "format"),
        ({"start": -1}, "start"),
        ({"cancel_on_disconnect": "maybe"}, "cancel_on_disconnect"),
    ):
        r = requests.get(f"{base}/v1/streams/{sid}/frames", params=params, headers=ACME)
        assert r.status_code == 422 and r.json()["error"]["field"] == field


@pytest.mark.parametrize("chunked", [False, True])
def test_oversized_body_413(base, chunked):
    big = b'{"prompt": "' + b"x" * (70 << 10) + b'"}'
    data = iter([big]) if chunked else big
    r = requests.post(
        f"{base}/v1/streams", data=data, headers={**ACME, "Content-Type": "application/json"}
    )
    assert r.status_code == 413 and r.json()["error"]["field"] == "body"


def test_wrong_method_is_4xx_json(base):
    r = requests.put(f"{base}/v1/streams", json={}, headers=ACME)
    assert r.status_code == 405 and "error" in r.json()


def test_health_capacity_openapi(base):
    assert requests.get(f"{base}/v1/health").json()["status"] == "ok"
    cap = requests.get(f"{base}/v1/capacity", headers=ACME).json()
    assert cap["free_bytes"] > 0 and cap["streams_that_fit"] >= 1
    short, long = (
        requests.get(f"{base}/v1/capacity?frames={n}", headers=ACME).json()["streams_that_fit"]
        for n in (3, 3000)
    )
    assert short > long  # the projection grows with the stream's length
    spec = requests.get(f"{base}/openapi.json").json()
    assert {
        "/v1/streams",
        "/v1/streams/{stream_id}",
        "/v1/streams/{stream_id}/frames",
        "/v1/streams/{stream_id}/video.mp4",
        "/v1/streams/{stream_id}/actions",
        "/v1/health",
        "/v1/capacity",
    } <= set(spec["paths"])


def test_metrics_exposition_counts_frames_and_rejections(base):
    from prometheus_client.parser import text_string_to_metric_families

    # self-contained (xdist may run this module's tests on two workers, two apps): make frames
    sid = create(base, frames=3).json()["id"]
    wait_state(base, sid, ("finished",))
    create(base, headers={"Authorization": "Bearer wrong"})
    text = requests.get(f"{base}/metrics").text
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    from qvg_serve.serve.metrics import METRIC_NAMES

    exposed = {f.name for f in fams.values()}
    for name in METRIC_NAMES:
        assert name.removesuffix("_total") in exposed, name
    frames = sum(s.value for s in fams["qvg_frames_generated"].samples if s.name.endswith("_total"))
    assert frames > 0
    unauthorized = [
        s.value
        for s in fams["qvg_requests_rejected"].samples
        if s.labels.get("reason") == "unauthorized" and s.name.endswith("_total")
    ]
    assert unauthorized and unauthorized[0] >= 1


@pytest.mark.parametrize("prompt", ["   ", "!!!", "\u00e9\u00e8"])
def test_prompt_without_words_422(base, prompt):
    r = create(base, prompt=prompt)
    assert r.status_code == 422 and r.json()["error"]["field"] == "prompt"
    sid = create(base, frames=240).json()["id"]
    r = requests.post(f"{base}/v1/streams/{sid}/actions", json={"prompt": prompt}, headers=ACME)
    assert r.status_code == 422 and r.json()["error"]["field"] == "prompt"
    requests.delete(f"{base}/v1/streams/{sid}", headers=ACME)


def test_prompt_with_unknown_words_422_names_them(base):
    r = create(base, prompt="a red fox in the snow")
    assert r.status_code == 422 and r.json()["error"]["field"] == "prompt"
    message = r.json()["error"]["message"]
    assert "'fox'" in message and "'snow'" in message and "'red' (" not in message
    sid = create(base, frames=240).json()["id"]
    r = requests.post(
        f"{base}/v1/streams/{sid}/actions", json={"prompt": "a red circel"}, headers=ACME
    )
    assert r.status_code == 422 and "did you mean 'circle'" in r.json()["error"]["message"]
    requests.delete(f"{base}/v1/streams/{sid}", headers=ACME)


def test_viewer_cap_gives_429_and_frees_on_close(serving):
    capped = serving.deploy("capped", "/capped", server={"max_viewers_per_tenant": 1})
    sid = create(capped, frames=240).json()["id"]
    url, params = f"{capped}/v1/streams/{sid}/frames", {"format": "sse"}
    first = requests.get(url, params=params, headers=ACME, stream=True, timeout=60)
    try:
        assert first.status_code == 200
        lines = first.iter_lines()  # kept: a dropped line iterator closes the connection
        next(lines)  # the first viewer is open
        second = requests.get(url, params=params, headers=ACME, stream=True, timeout=60)
        assert second.status_code == 429, second.text
        assert second.json()["error"]["code"] == "too_many_viewers"
        assert second.headers["Retry-After"]
    finally:
        first.close()
    end, code = time.time() + 60, 429  # freed once the server sees the hang-up (next write)
    while code == 429 and time.time() < end:
        third = requests.get(url, params=params, headers=ACME, stream=True, timeout=60)
        code = third.status_code
        third.close()
        time.sleep(0.5)
    requests.delete(f"{capped}/v1/streams/{sid}", headers=ACME, timeout=30)
    assert code == 200


def test_three_times_capacity_at_once_waits_or_429_and_never_loses_history(serving):
    # Issue 13: creates at 3x what /v1/capacity says fits, all at once. Admission projects each
    # stream's footprint, so the excess waits in the queue (or gets 429 + Retry-After), and
    # no admitted stream is preempted or degraded (before: all admitted, 70 of 132 preempted).
    app = serving.deploy("full", "/full")  # BASE_ARGS: the 16 MiB arena
    frames = 24
    cap = requests.get(f"{app}/v1/capacity?frames={frames}", headers=ACME, timeout=30).json()
    fit = cap["streams_that_fit"]
    assert fit >= 1, cap
    n = 3 * fit
    with ThreadPoolExecutor(n) as pool:
        answers = list(pool.map(lambda i: create(app, frames=frames, seed=i), range(n)))
    created = [r.json()["id"] for r in answers if r.status_code == 201]
    refused = [r for r in answers if r.status_code != 201]
    assert all(r.status_code == 429 and r.headers.get("Retry-After") for r in refused), [
        (r.status_code, r.text[:200]) for r in refused
    ]
    assert len(created) >= fit
    print(f"\n3x capacity: {fit} fit, {n} created at once: {len(created)} admitted or queued, "
          f"{len(refused)} got 429")  # fmt: skip
    ends = [
        wait_state(app, sid, {"finished", "failed", "cancelled"}, timeout=600) for sid in created
    ]
    assert [e["state"] for e in ends] == ["finished"] * len(created), ends
    assert sum(e["preemptions"] for e in ends) == 0, ends
    assert not any(e["degraded"] for e in ends), ends
