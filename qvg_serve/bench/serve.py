"""`qvg-serve bench serve`: concurrent HTTP streams against a local app.

Per concurrency level: N clients each create a stream (POST) and read its SSE frames. Time to
first frame = POST sent -> first frame event received (admission + a chunk's denoising + decode
+ JPEG + transport); inter-chunk latency = gap between the first frames of consecutive chunks.
Errors = a refused create (429/4xx/5xx) or a stream that did not deliver all its frames.

`--scenario viewers | disconnect | placement | rss` runs one of issue 16's operations targets
instead (serve_ops.py, serve_fleet.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

SCENARIOS = {  # name -> (module, function, replicas, frames per stream)
    "viewers": ("serve_ops", "viewers", 2, 960),
    "disconnect": ("serve_ops", "disconnect", 2, 480),
    "placement": ("serve_fleet", "placement", 4, 480),
    "rss": ("serve_fleet", "rss", 1, 48),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--streams", default="1,8,32,100", help="concurrency levels, comma-separated")
    p.add_argument("--frames", type=int, default=None, help="frames per stream (24; scenarios: "
                   "viewers 960, disconnect 480, placement 480, rss 48)")  # fmt: skip
    p.add_argument("--scenario", choices=["levels", *SCENARIOS], default="levels")
    p.add_argument(
        "--model",
        default=None,
        help="tiny (default); tiny-ops: one narrow random layer, for the rss scenario",
    )
    p.add_argument(
        "--replica-cpus",
        type=float,
        default=None,
        help="scenarios: Ray CPUs per engine replica (min(0.5, 1 / replicas))",
    )
    p.add_argument("--replicas", type=int, default=None, help="engine replicas (scenarios)")
    p.add_argument("--viewers", type=int, default=500, help="viewers: SSE connections open")
    p.add_argument("--watched", type=int, default=20, help="viewers: streams they watch")
    p.add_argument("--workers", type=int, default=4, help="viewers: timing clients")
    p.add_argument("--pause", type=float, default=0.05, help="viewers: s between a client's ops")
    p.add_argument("--seconds", type=float, default=None, help="viewers 60 / rss 540")
    p.add_argument("--trials", type=int, default=200, help="disconnect: trials per flag value")
    p.add_argument("--batch", type=int, default=10, help="disconnect: trials at once")
    p.add_argument("--grace", type=float, default=10.0, help="disconnect: s for a cancel")
    p.add_argument("--hold", type=float, default=3.0, help="disconnect: s watched, flag off")
    p.add_argument("--bursts", type=int, default=5, help="placement: bursts")
    p.add_argument("--burst", type=int, default=40, help="placement: creates at once")
    p.add_argument("--settle", type=float, default=3.0, help="placement: s before measuring")
    p.add_argument("--concurrency", type=int, default=8, help="rss: streams at once")
    p.add_argument("--count", type=int, default=1000, help="rss: streams at most")
    p.add_argument("--every", type=float, default=10.0, help="rss: s between RSS samples")
    p.add_argument("--warmup", type=int, default=20, help="rss: streams before growth counts")
    p.add_argument("--frames-ram-mib", type=int, default=64, help="rss: durability cap")
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


def scenario(args: argparse.Namespace) -> int:
    import importlib

    from qvg_serve.bench import serve_ops
    from qvg_serve.serve.cli import start, stop

    module, fn, replicas, frames = SCENARIOS[args.scenario]
    args.replicas = args.replicas or replicas
    args.frames = args.frames or frames
    args.model = args.model or "tiny"
    args.seconds = args.seconds or (60.0 if args.scenario == "viewers" else 540.0)
    cfg = serve_ops.config(args, args.replicas, max_viewers_per_tenant=args.viewers + 64)
    cfg["durability"]["frames_ram_mib"] = args.frames_ram_mib
    run_it = getattr(importlib.import_module(f"qvg_serve.bench.{module}"), fn)
    try:
        base = args.url.rstrip("/") if args.url else start(cfg, "127.0.0.1", _free_port(),
                                                            quiet=True)  # fmt: skip
        result = {"scenario": args.scenario, "model": args.model, **run_it(base, args)}
    finally:
        if not args.url:
            stop()
    print(json.dumps(result, indent=1))
    return 0


def run(args: argparse.Namespace) -> int:
    if args.scenario != "levels":
        return scenario(args)
    args.frames = args.frames or 24
    levels = [int(x) for x in args.streams.split(",") if x.strip()]
    if args.url:
        return _report([level(args.url.rstrip("/"), n, args.frames) for n in levels], args)
    from qvg_serve.serve.cli import start, stop

    cfg = {
        "engine": {"model": args.model or "tiny", "device": args.device,
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
