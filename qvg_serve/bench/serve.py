"""`qvg-serve bench serve`: concurrent HTTP streams against a local app.

Per concurrency level: N clients each create a stream (POST) and read its SSE frames. Time to
first frame = POST sent -> first frame event received (admission + a chunk's denoising + decode
+ JPEG + transport); inter-chunk latency = gap between the first frames of consecutive chunks.
Errors = a refused create (429/4xx/5xx) or a stream that did not deliver all its frames.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--streams", default="1,8,32,100", help="concurrency levels, comma-separated")
    p.add_argument("--frames", type=int, default=24, help="frames per stream")
    p.add_argument("--kv-cache-mib", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-batch-streams", type=int, default=8)
    p.add_argument("--num-gpus", type=float, default=0.0, help="per engine replica")
    p.add_argument("--url", default=None, help="bench a running app instead of starting one")
    p.add_argument("--json", action="store_true", help="print results as JSON")


def one_stream(base: str, frames: int, seed: int) -> dict:
    import requests

    from qvg_serve.serve.frames import parse_sse

    t0 = time.perf_counter()
    r = requests.post(
        f"{base}/v1/streams",
        # a caption in the tiny model's vocabulary (other words are refused with 422)
        json={"prompt": "a red circle bouncing on black", "frames": frames, "seed": seed},
        timeout=600,
    )
    if r.status_code != 201:
        return {"error": f"create {r.status_code}"}
    sid = r.json()["id"]
    resp = requests.get(
        f"{base}/v1/streams/{sid}/frames", params={"format": "sse"}, stream=True, timeout=600
    )
    firsts: dict[int, float] = {}
    got = 0

    def lines():
        for line in resp.iter_lines(decode_unicode=True):
            yield line
            if line.startswith("data:") and '"chunk"' in line:
                chunk = json.loads(line[5:])["chunk"]
                firsts.setdefault(chunk, time.perf_counter())

    for event, _ in parse_sse(lines()):
        got += event == "frame"
    if got != frames or not firsts:
        return {"error": f"got {got}/{frames} frames"}
    times = [firsts[c] for c in sorted(firsts)]
    return {"ttff": times[0] - t0, "gaps": [b - a for a, b in zip(times, times[1:], strict=False)]}


def level(base: str, n: int, frames: int) -> dict:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(lambda i: one_stream(base, frames, i), range(n)))
    ok = [r for r in results if "ttff" in r]
    ttff = sorted(r["ttff"] for r in ok)
    gaps = sorted(g for r in ok for g in r["gaps"])
    return {
        "streams": n, "frames": frames, "seconds": round(time.perf_counter() - t0, 2),
        "errors": n - len(ok), "error_kinds": sorted({r["error"] for r in results if "error" in r}),
        "ttff_p50_s": _q(ttff, 0.5), "ttff_p99_s": _q(ttff, 0.99),
        "inter_chunk_p50_s": _q(gaps, 0.5), "inter_chunk_p99_s": _q(gaps, 0.99),
    }  # fmt: skip


def _q(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    if len(xs) == 1:
        return round(xs[0], 4)
    return round(statistics.quantiles(xs, n=100, method="inclusive")[round(q * 100) - 1], 4)


def run(args: argparse.Namespace) -> int:
    levels = [int(x) for x in args.streams.split(",") if x.strip()]
    if args.url:
        return _report([level(args.url.rstrip("/"), n, args.frames) for n in levels], args)
    from qvg_serve.serve.cli import start, stop

    cfg = {
        "engine": {"model": "tiny", "device": args.device,
                   "kv_cache_memory_bytes": args.kv_cache_mib << 20},
        "scheduler": {"max_waiting": max(levels) + 8, "max_batch_streams": args.max_batch_streams,
                      "max_batch_tokens": args.max_batch_streams * 3 * 1560},
        "server": {"auth": False},
        "deployment": {"max_ongoing_requests": 4 * max(levels) + 16,
                       "ray_actor_options": {"num_gpus": args.num_gpus, "num_cpus": 1}},
    }  # fmt: skip
    try:
        base = start(cfg, "127.0.0.1", _free_port(), quiet=True)
        return _report([level(base, n, args.frames) for n in levels], args)
    finally:
        stop()


def _report(rows: list[dict], args: argparse.Namespace) -> int:
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(
        f"{'streams':>8} {'errors':>6} {'TTFF p50':>9} {'TTFF p99':>9} {'chunk p50':>10} "
        f"{'chunk p99':>10} {'wall s':>7}"
    )
    for r in rows:
        print(
            f"{r['streams']:>8} {r['errors']:>6} {_s(r['ttff_p50_s'])} {_s(r['ttff_p99_s'])} "
            f"{_s(r['inter_chunk_p50_s'], 10)} {_s(r['inter_chunk_p99_s'], 10)} "
            f"{r['seconds']:>7}"
        )
        if r["error_kinds"]:
            print(f"{'':>8} errors: {', '.join(r['error_kinds'])}", file=sys.stderr)
    return 0


def _s(v: float | None, width: int = 9) -> str:
    return f"{'-':>{width}}" if v is None else f"{v:>{width}.3f}"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
