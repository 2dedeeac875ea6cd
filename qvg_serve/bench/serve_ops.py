"""Operations scenarios of `qvg-serve bench serve --scenario ...` (issue 16's targets).

    viewers     V SSE viewers held open (viewers.py, another process) while status, create
                and DELETE are timed: p50 / p99 / max per request kind, and every 5xx
    disconnect  T trials each way: open a stream's frames, read one frame, hang up; with
                cancel_on_disconnect=true a miss is a stream not cancelled (or holding pages)
                `--grace` s later; with it off, any cancel is wrong
    placement   K bursts of B creates at once on R replicas: streams and KV bytes per replica
                over the even share (the target: none above 1.5x)
    rss         one engine replica runs 48-frame streams, C at a time, for `--seconds`: its
                process RSS (/proc) sampled at the start, every 10 s and at the end

Every figure is from the client's side over HTTP, except RSS (/proc of the replica's pid, which
the replica reports in /v1/health-style calls) and the store's frame bytes.
"""

from __future__ import annotations

import argparse
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

PROMPT = "a red circle bouncing on black"


def config(args: argparse.Namespace, replicas: int, **server) -> dict:
    """A local app on the CPU: `--model` (tiny by default), `replicas` engine replicas
    sharing the local Ray's CPUs."""
    cpus = args.replica_cpus or round(min(0.5, 1.0 / replicas), 3)
    return {
        "engine": {"model": args.model, "device": args.device,
                   "kv_cache_memory_bytes": args.kv_cache_mib << 20},
        "scheduler": {"max_waiting": 256, "max_batch_streams": args.max_batch_streams},
        "server": {"auth": False, **server},
        "deployment": {"num_replicas": replicas, "max_ongoing_requests": 256,
                       "ray_actor_options": {"num_gpus": args.num_gpus, "num_cpus": cpus}},
        "durability": {"dead_after_s": 60.0},
    }  # fmt: skip


def _create(base: str, frames: int, seed: int):
    import requests

    body = {"prompt": PROMPT, "frames": frames, "seed": seed}
    return requests.post(f"{base}/v1/streams", json=body, timeout=120)


def _pages(status: dict) -> int:
    return sum(n for tiers in status.get("pages", {}).values() for n in tiers.values())


def kv_left(base: str) -> dict:
    """Live streams and KV bytes in use, summed over the replicas (/v1/capacity)."""
    import requests

    cap = requests.get(f"{base}/v1/capacity", timeout=60).json()
    live = sum(r["live_streams"] for r in cap["replicas"])
    return {"live_streams": live, "kv_used_bytes": cap["total_bytes"] - cap["free_bytes"]}


def _q(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(q * len(xs)))], 4)


def _lat(xs: list[float]) -> dict:
    return {"n": len(xs), "p50_s": _q(xs, 0.5), "p99_s": _q(xs, 0.99),
            "max_s": round(max(xs), 4) if xs else None}  # fmt: skip


# -- viewers ------------------------------------------------------------------------------------


def viewers(base: str, args: argparse.Namespace) -> dict:
    import requests

    from qvg_serve.bench.viewers import ViewerProcess

    ids = [_create(base, args.frames, i).json()["id"] for i in range(args.watched)]
    view = ViewerProcess(base, ids, args.viewers)
    t_open = time.time()
    while view.state()["open"] < args.viewers and time.time() - t_open < 120:
        time.sleep(0.5)
    opened_in = round(time.time() - t_open, 1)
    lat: dict[str, list[float]] = {"status": [], "create": [], "delete": []}
    codes: Counter[str] = Counter()
    open_min = [args.viewers]

    def timed(kind: str, fn) -> object:
        t0 = time.perf_counter()
        r = fn()
        lat[kind].append(time.perf_counter() - t0)
        codes[f"{kind} {r.status_code}"] += 1
        return r

    def worker(w: int) -> None:
        rng, end = random.Random(w), time.time() + args.seconds
        while time.time() < end:
            sid = rng.choice(ids)
            timed("status", lambda sid=sid: requests.get(f"{base}/v1/streams/{sid}", timeout=60))
            r = timed("create", lambda: _create(base, 12, rng.randrange(1 << 30)))
            if r.status_code == 201:
                new = r.json()["id"]
                timed("delete", lambda new=new: requests.delete(f"{base}/v1/streams/{new}",
                                                                timeout=60))  # fmt: skip
            open_min[0] = min(open_min[0], view.state()["open"])
            time.sleep(args.pause)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(args.workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seen = view.stop()
    for sid in ids:
        requests.delete(f"{base}/v1/streams/{sid}", timeout=60)
    return {
        "viewers": args.viewers, "watched_streams": len(ids), "opened_in_s": opened_in,
        "open_min_while_timed": open_min[0], "viewer_state": seen,
        **{k: _lat(v) for k, v in lat.items()},
        "codes": dict(codes), "5xx": sum(n for c, n in codes.items() if c.split()[1][0] == "5"),
    }  # fmt: skip


# -- disconnect ---------------------------------------------------------------------------------


def _trial(base: str, frames: int, seed: int, flag: bool, grace: float) -> dict:
    import requests

    r = _create(base, frames, seed)
    if r.status_code != 201:
        return {"error": f"create {r.status_code}"}
    sid = r.json()["id"]
    t0 = time.time()
    params = {"format": "sse", "cancel_on_disconnect": str(flag).lower()}
    with requests.get(f"{base}/v1/streams/{sid}/frames", params=params, stream=True,
                      timeout=120) as resp:  # fmt: skip
        for line in resp.iter_lines(decode_unicode=True):
            if line.startswith("event: frame"):
                break
    hung_up = time.time()  # the connection is closed here
    st: dict = {}
    while time.time() - hung_up < grace:
        st = requests.get(f"{base}/v1/streams/{sid}", timeout=60).json()
        if flag and st["state"] == "cancelled":
            break
        time.sleep(0.25)
    out = {"state": st.get("state"), "pages": _pages(st), "first_frame_s": hung_up - t0,
           "cancel_s": time.time() - hung_up}  # fmt: skip
    if not flag or st.get("state") != "cancelled":
        requests.delete(f"{base}/v1/streams/{sid}", timeout=60)
    return out


def disconnect(base: str, args: argparse.Namespace) -> dict:
    out = {}
    for flag in (True, False):
        grace = args.grace if flag else args.hold
        with ThreadPoolExecutor(args.batch) as pool:
            got = list(pool.map(lambda i, f=flag, g=grace: _trial(base, args.frames, i, f, g),
                                range(args.trials)))  # fmt: skip
        errors = [g for g in got if "error" in g]
        ok = [g for g in got if "error" not in g]
        cancelled = [g for g in ok if g["state"] == "cancelled"]
        row = {"trials": len(got), "errors": len(errors), "cancelled": len(cancelled),
               "states": dict(Counter(g["state"] for g in ok))}  # fmt: skip
        if flag:  # every trial stream should be gone from the replicas now
            row["misses"] = len(ok) - len(cancelled)
            row["after"] = kv_left(base)
            row["cancel_after_hangup"] = _lat([g["cancel_s"] for g in cancelled])
            row["grace_s"] = grace
        else:
            row["wrong_cancels"] = len(cancelled)
            row["held_s"] = grace
        out["flag_on" if flag else "flag_off"] = row
    return out
