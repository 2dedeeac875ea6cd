"""`qvg-serve bench chaos`: streams through replica kills (issue 15's "10 kills, 0 lost").

A local app with `--replicas` engine replicas (tiny model by default). N clients each create a
stream and read its SSE frames the way a browser's EventSource does: when the connection is
cut they reconnect with `Last-Event-ID`. Meanwhile the harness `kill -9`s the replica holding
the most live streams, `--kills` times, `--every` seconds apart (Serve starts a replacement;
the stream store re-homes the dead replica's streams). Reported per run:

    completed   streams whose client saw frames 0..N-1 exactly once, in order, and an `end`
                event with reason "completed"
    lost        the others (with what each one saw)
    status_5xx  status answers other than 200 / 503 (a 404 while recovering counts as lost)
    recover_max_s  longest gap between two frames of one stream (the kill-to-resume time)

Every number comes from the clients' view over HTTP; nothing is read from the server's memory.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections import Counter

PROMPT = "a red circle bouncing on black"  # words the tiny model knows


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--streams", type=int, default=20, help="concurrent streams")
    p.add_argument("--frames", type=int, default=48, help="frames per stream")
    p.add_argument("--kills", type=int, default=10, help="replica kills during the run")
    p.add_argument("--every", type=float, default=6.0, help="seconds between kills")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--kv-cache-mib", type=int, default=128, help="KV arena per replica")
    p.add_argument("--device", default="cpu")
    p.add_argument("--num-cpus", type=int, default=None, help="local Ray CPUs (default: all)")
    p.add_argument("--deadline", type=float, default=1800.0, help="seconds before giving up")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


class Client(threading.Thread):
    """One stream's viewer: SSE with Last-Event-ID reconnects, frame indices and times."""

    def __init__(self, base: str, sid: str, deadline: float) -> None:
        super().__init__(daemon=True)
        self.url, self.deadline = f"{base}/v1/streams/{sid}/frames", deadline
        self.frames: list[int] = []
        self.times: list[float] = []
        self.end: dict | None = None
        self.cuts = 0

    def run(self) -> None:
        import requests

        while self.end is None and time.time() < self.deadline:
            headers = {} if not self.frames else {"Last-Event-ID": str(self.frames[-1])}
            try:
                r = requests.get(
                    self.url, params={"format": "sse"}, headers=headers, stream=True, timeout=60
                )
                if r.status_code != 200:
                    self.cuts += 1
                    time.sleep(1.0)
                    continue
                self._read(r)
            except requests.RequestException:
                self.cuts += 1
                time.sleep(0.5)

    def _read(self, r) -> None:
        event = "message"
        for line in r.iter_lines(decode_unicode=True):
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data = json.loads(line[5:])
                if event == "frame":
                    self.frames.append(data["index"])
                    self.times.append(time.time())
                elif event == "end":
                    self.end = data
                    return
        self.cuts += 1  # closed without an end event: reconnect


def _replica_pids(base_app: str) -> dict[str, int]:
    from ray import serve

    handle = serve.get_deployment_handle("QVGEngine", base_app)
    seen: dict[str, int] = {}
    for _ in range(16):
        got = handle.health.remote().result(timeout_s=30)
        seen[got["replica"]] = got["pid"]
    return seen


def _victim(app: str) -> tuple[str, int] | None:
    """The live replica holding the most live streams (the store's view), and its pid."""
    import ray

    from qvg_serve.serve.store import NAMESPACE, store_name

    store = ray.get_actor(store_name(app), namespace=NAMESPACE)
    pids = _replica_pids(app)
    load = ray.get(store.load.remote())
    if not pids:
        return None
    rid = max(pids, key=lambda r: load.get(r, 0))
    return rid, pids[rid]


def _killer(app: str, kills: int, every: float, log: list, stop: threading.Event) -> None:
    for _ in range(kills):
        if stop.wait(every):
            return
        try:
            victim = _victim(app)
        except Exception as exc:  # the app between replicas: try again next period
            log.append({"t": time.time(), "error": repr(exc)[:200]})
            continue
        if victim is None:
            continue
        os.kill(victim[1], signal.SIGKILL)
        log.append({"t": time.time(), "replica": victim[0], "pid": victim[1]})


def run(args: argparse.Namespace) -> int:
    import requests

    from qvg_serve.serve.cli import APP_NAME, start, stop

    app = APP_NAME
    cfg = {
        "engine": {"model": "tiny", "device": args.device,
                   "kv_cache_memory_bytes": args.kv_cache_mib << 20},
        "scheduler": {"max_waiting": args.streams + 8},
        "server": {"auth": False},
        "deployment": {"num_replicas": args.replicas, "max_ongoing_requests": 64,
                       "ray_actor_options": {"num_cpus": 0.5}},
        "durability": {"heartbeat_s": 0.25, "dead_after_s": 2.0},
    }  # fmt: skip
    base = start(cfg, "127.0.0.1", _free_port(), num_cpus=args.num_cpus, quiet=True)
    try:
        t0 = time.time()
        deadline = t0 + args.deadline
        clients, create_errors = [], Counter()
        for i in range(args.streams):
            body = {"prompt": PROMPT, "frames": args.frames, "seed": i}
            r = requests.post(f"{base}/v1/streams", json=body, timeout=60)
            if r.status_code != 201:
                create_errors[r.status_code] += 1
                continue
            c = Client(base, r.json()["id"], deadline)
            c.start()
            clients.append(c)
        kills: list[dict] = []
        halt = threading.Event()
        killer = threading.Thread(
            target=_killer, args=(app, args.kills, args.every, kills, halt), daemon=True
        )
        killer.start()
        while any(c.is_alive() for c in clients) and time.time() < deadline:
            time.sleep(10)
            done = sum(c.end is not None for c in clients)
            got = sum(len(c.frames) for c in clients)
            print(f"chaos: {time.time() - t0:.0f} s, {len(kills)} kills, {done}/{len(clients)} "
                  f"ended, {got} frames received", file=sys.stderr, flush=True)  # fmt: skip
        halt.set()
        killer.join(timeout=30)
        result = _summary(args, clients, kills, create_errors, time.time() - t0)
    finally:
        stop()
    print(json.dumps(result, indent=1) if args.json else _text(result))
    return 0 if result["lost"] == 0 else 1


def _summary(args, clients: list[Client], kills: list[dict], create_errors, wall: float) -> dict:
    want = list(range(args.frames))
    ok = [c for c in clients if c.frames == want and (c.end or {}).get("reason") == "completed"]
    lost = [c for c in clients if c not in ok]
    gaps = [b - a for c in clients for a, b in zip(c.times, c.times[1:], strict=False)]
    return {
        "streams": args.streams, "frames": args.frames, "replicas": args.replicas,
        "kills": sum("pid" in k for k in kills), "kill_errors": sum("error" in k for k in kills),
        "completed": len(ok), "lost": len(lost) + sum(create_errors.values()),
        "create_errors": dict(create_errors),
        "lost_detail": [{"frames": len(c.frames), "dupes": len(c.frames) - len(set(c.frames)),
                         "end": c.end} for c in lost][:10],
        "reconnects": sum(c.cuts for c in clients),
        "recover_max_s": round(max(gaps), 2) if gaps else None,
        "wall_s": round(wall, 1),
    }  # fmt: skip


def _text(r: dict) -> str:
    return (
        f"{r['streams']} streams x {r['frames']} frames on {r['replicas']} replicas, "
        f"{r['kills']} kills: {r['completed']} completed, {r['lost']} lost, "
        f"{r['reconnects']} reconnects, longest frame gap {r['recover_max_s']} s, "
        f"{r['wall_s']} s"
    )


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
