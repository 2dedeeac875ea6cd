"""Replica-level scenarios of `qvg-serve bench serve --scenario placement | rss`
(serve_ops.py has the others and the shared app config)."""

from __future__ import annotations

import argparse
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from qvg_serve.bench.serve_ops import _create


def _capacity(base: str) -> dict[str, dict]:
    import requests

    got = requests.get(f"{base}/v1/capacity", timeout=60).json()
    return {r["replica"]: r for r in got["replicas"]}


def _wait_empty(base: str, timeout: float = 120) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if all(r["live_streams"] == 0 for r in _capacity(base).values()):
            return
        time.sleep(0.5)


def placement(base: str, args: argparse.Namespace) -> dict:
    """`--bursts` bursts of `--burst` creates at once: streams and KV per replica vs the
    even share, measured `--settle` s after the last answer (streams admitted by then)."""
    import requests

    rows = []
    for k in range(args.bursts):
        with ThreadPoolExecutor(args.burst) as pool:
            answers = list(pool.map(lambda i, k=k: _create(base, args.frames, k * 1000 + i),
                                    range(args.burst)))  # fmt: skip
        ids = [r.json()["id"] for r in answers if r.status_code == 201]
        time.sleep(args.settle)
        cap = _capacity(base)
        for sid in ids:
            requests.delete(f"{base}/v1/streams/{sid}", timeout=60)
        streams = Counter(sid.rpartition("-")[0] for sid in ids)
        kv = {rid: r["total_bytes"] - r["free_bytes"] for rid, r in cap.items()}
        n = len(cap)
        rows.append({
            "created": len(ids), "refused": len(answers) - len(ids),
            "streams_per_replica": sorted((streams.get(r, 0) for r in cap), reverse=True),
            "streams_max_over_share": round(max(streams.values()) * n / max(1, len(ids)), 3),
            "kv_per_replica_mib": sorted((round(v / 2**20, 2) for v in kv.values()),
                                         reverse=True),
            "kv_max_over_share": round(max(kv.values()) * n / max(1, sum(kv.values())), 3),
        })  # fmt: skip
        _wait_empty(base)
    return {
        "replicas": args.replicas, "burst": args.burst, "bursts": rows,
        "worst_streams_over_share": max(r["streams_max_over_share"] for r in rows),
        "worst_kv_over_share": max(r["kv_max_over_share"] for r in rows),
    }  # fmt: skip


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _engine_pid() -> int:
    from ray import serve

    from qvg_serve.serve.cli import APP_NAME

    handle = serve.get_deployment_handle("QVGEngine", APP_NAME)
    return handle.health.remote().result(timeout_s=60)["pid"]


def _run_one(base: str, frames: int, seed: int, deadline: float) -> str:
    import requests

    r = _create(base, frames, seed)
    if r.status_code != 201:
        return f"create {r.status_code}"
    sid = r.json()["id"]
    while time.time() < deadline + 120:
        st = requests.get(f"{base}/v1/streams/{sid}", timeout=60).json()
        if st["state"] in ("finished", "cancelled", "failed"):
            return st["state"]
        time.sleep(0.5)
    return "timeout"


def rss(base: str, args: argparse.Namespace) -> dict:
    """One engine replica: 48-frame streams, `--concurrency` at a time, for `--seconds` (or
    `--count` streams); the replica's RSS at the start, every `--every` s and at the end."""
    import ray

    from qvg_serve.serve.cli import APP_NAME
    from qvg_serve.serve.store import NAMESPACE, store_name

    pid, t0 = _engine_pid(), time.time()
    deadline = t0 + args.seconds
    samples = [{"t_s": 0.0, "finished": 0, "rss_mib": _rss_mib(pid)}]
    ends: Counter[str] = Counter()
    started = 0

    def one(seed: int) -> None:
        ends[_run_one(base, args.frames, seed, deadline)] += 1

    with ThreadPoolExecutor(args.concurrency) as pool:
        futures = []
        next_sample = t0 + args.every
        while time.time() < deadline and started < args.count:
            while len([f for f in futures if not f.done()]) < args.concurrency and (
                started < args.count
            ):
                futures.append(pool.submit(one, started))
                started += 1
            if time.time() >= next_sample:
                samples.append({"t_s": round(time.time() - t0, 1), "finished": sum(ends.values()),
                                "rss_mib": _rss_mib(pid)})  # fmt: skip
                next_sample += args.every
            time.sleep(0.2)
        for f in futures:
            f.result()
    samples.append({"t_s": round(time.time() - t0, 1), "finished": sum(ends.values()),
                    "rss_mib": _rss_mib(pid)})  # fmt: skip
    store = ray.get_actor(store_name(APP_NAME), namespace=NAMESPACE)
    held = ray.get(store.stats.remote())
    warm = next((s for s in samples if s["finished"] >= args.warmup), samples[0])
    last = samples[-1]
    per = (last["rss_mib"] - warm["rss_mib"]) / max(1, last["finished"] - warm["finished"])
    return {
        "streams": last["finished"], "ends": dict(ends), "frames": args.frames,
        "frames_ram_mib": args.frames_ram_mib, "rss_start_mib": samples[0]["rss_mib"],
        "rss_end_mib": last["rss_mib"], "rss_peak_mib": max(s["rss_mib"] for s in samples),
        "after_warmup": warm, "growth_per_stream_kib": round(per * 1024, 2),
        "store": {k: held[k] for k in held if "bytes" in k or k in ("streams", "released")},
        "samples": samples,
    }  # fmt: skip
