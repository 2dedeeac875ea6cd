"""`qvg-serve demo`: the embedded default. Local Ray, the tiny model, N streams created over HTTP
with different prompts, live progress, one MP4 per stream and a KV memory report (JSON + PNG
of KV bytes over time: BF16-equivalent vs the QVG bytes actually held) in --out."""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

from qvg_serve.bench.plot import write_line_plot

# Captions in the tiny model's vocabulary (qvg_serve/tiny/data.py): what it was trained on.
PROMPTS = (
    "a red circle bouncing on black",
    "camera panning right over the astronaut",
    "a yellow star rotating on checkerboard",
    "a blue square moving left on gradient",
    "camera zooming in over the cat",
    "a green triangle orbiting on grey",
    "a purple hexagon moving up on black",
    "camera panning left over the coffee",
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--streams", type=int, default=4, help="concurrent streams (>= 1)")
    p.add_argument("--frames", type=int, default=48, help="video frames per stream")
    p.add_argument("--out", type=Path, default=Path("qvg-demo"), help="output folder")
    p.add_argument(
        "--kv-cache-mib",
        type=int,
        default=16,
        help="KV arena; small so the streams do not fit in BF16 and QVG kicks in",
    )
    p.add_argument("--port", type=int, default=0, help="HTTP port (0 = a free one)")


def demo_args(kv_mib: int) -> dict:
    return {
        "engine": {"model": "tiny", "device": "cpu", "kv_cache_memory_bytes": kv_mib << 20},
        # low watermarks: the ladder quantizes committed pages early, so the report shows QVG;
        # one sink + two window pages bf16 (a tiny-model page is one 64 x 96 frame)
        "scheduler": {
            "high_watermark": 0.5,
            "low_watermark": 0.4,
            "sink_pages": 1,
            "window_pages": 2,
        },
        "server": {"host": "127.0.0.1", "auth": False},
        "deployment": {"ray_actor_options": {"num_cpus": 1}},
    }


def run(args: argparse.Namespace) -> int:
    if args.streams < 1 or args.frames < 1:
        print("qvg-serve demo: --streams and --frames must be >= 1", file=sys.stderr)
        return 2
    import logging
    import os

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    logging.getLogger("ray").setLevel(logging.ERROR)
    from qvg_serve.serve.cli import start, stop

    port = args.port or _free_port()
    print(f"qvg-serve demo: starting local Ray + the tiny model on :{port} ...", file=sys.stderr)
    _interrupt_on_sigterm()
    try:
        base = start(demo_args(args.kv_cache_mib), "127.0.0.1", port, num_cpus=2, quiet=True)
        _interrupt_on_sigterm()  # again: ray.init replaced the driver's SIGTERM handler
        return _run_streams(base, args)
    except KeyboardInterrupt:  # SIGINT, or SIGTERM below: the demo is its only client
        print("qvg-serve demo: interrupted; stopping Serve and Ray", file=sys.stderr)
        return 130
    except ValueError as exc:  # preflight: the port is taken
        print(f"qvg-serve demo: {exc}", file=sys.stderr)
        return 2
    finally:
        stop()


def _interrupt_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so `finally: stop()` runs and no Ray process is left."""
    import signal

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def _run_streams(base: str, args: argparse.Namespace) -> int:
    import requests

    args.out.mkdir(parents=True, exist_ok=True)
    ids, prompts = [], [PROMPTS[i % len(PROMPTS)] for i in range(args.streams)]
    for i, prompt in enumerate(prompts):
        r = requests.post(
            f"{base}/v1/streams",
            json={"prompt": prompt, "frames": args.frames, "seed": i},
            timeout=60,
        )
        if r.status_code != 201:
            print(f"stream {i}: refused {r.status_code} {r.text}", file=sys.stderr)
            return 1
        ids.append(r.json()["id"])
    memory = MemorySampler(base)
    memory.start()
    t0 = time.time()
    done = _progress(base, ids, args.frames, t0)
    memory.stop()
    for i, sid in enumerate(ids):
        r = requests.get(f"{base}/v1/streams/{sid}/video.mp4", timeout=120)
        path = args.out / f"stream_{i:02d}.mp4"
        path.write_bytes(r.content)
        print(f"{path}  ({done[sid]} frames, {prompts[i]!r})")
    report = memory.report(args, time.time() - t0)
    (args.out / "memory.json").write_text(json.dumps(report, indent=1))
    write_line_plot(
        args.out / "memory.png",
        memory.t,
        {
            "bf16-equivalent": [b / 2**20 for b in memory.bf16],
            "held (QVG pool)": [b / 2**20 for b in memory.held],
        },
        title="KV MiB over time",
    )
    print(
        f"{args.out / 'memory.json'}  peak held {report['peak_held_bytes'] / 2**20:.1f} MiB "
        f"vs bf16-equivalent {report['peak_bf16_equivalent_bytes'] / 2**20:.1f} MiB"
    )
    print(f"{args.out / 'memory.png'}")
    return 0


def _progress(base: str, ids: list[str], frames: int, t0: float) -> dict[str, int]:
    import requests

    done = dict.fromkeys(ids, 0)
    while True:
        states = []
        for sid in ids:
            st = requests.get(f"{base}/v1/streams/{sid}", timeout=30).json()
            done[sid] = st["frames_done"]
            states.append(st["state"])
        line = "  ".join(f"{d:>3}/{frames}" for d in done.values())
        print(f"[{time.time() - t0:6.1f}s] frames {line}", file=sys.stderr)
        if all(s in ("finished", "cancelled", "failed") for s in states):
            return done
        time.sleep(1.0)


class MemorySampler(threading.Thread):
    """Polls /metrics: KV bytes held and their BF16-equivalent, summed over tiers."""

    def __init__(self, base: str, period: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.base, self.period, self._stop_evt = base, period, threading.Event()
        self.t: list[float] = []
        self.held: list[float] = []
        self.bf16: list[float] = []
        self.compression: list[float] = []

    def run(self) -> None:
        t0 = time.time()
        while not self._stop_evt.is_set():
            sample = scrape(self.base)
            if sample:
                self.t.append(time.time() - t0)
                self.held.append(sample["qvg_kv_bytes"])
                self.bf16.append(sample["qvg_kv_bf16_equivalent_bytes"])
                self.compression.append(sample["qvg_kv_effective_compression_ratio"])
            self._stop_evt.wait(self.period)

    def stop(self) -> None:
        self._stop_evt.set()
        self.join(timeout=10)

    def report(self, args: argparse.Namespace, seconds: float) -> dict:
        return {
            "streams": args.streams, "frames_per_stream": args.frames,
            "kv_cache_bytes": args.kv_cache_mib << 20, "seconds": round(seconds, 2),
            "peak_held_bytes": max(self.held, default=0),
            "peak_bf16_equivalent_bytes": max(self.bf16, default=0),
            "peak_compression_ratio": max(self.compression, default=1.0),
            "samples": [{"t": round(t, 3), "held_bytes": h, "bf16_equivalent_bytes": b}
                        for t, h, b in zip(self.t, self.held, self.bf16, strict=True)],
        }  # fmt: skip


def scrape(base: str) -> dict[str, float]:
    """Sums of a few gauges from /metrics (over every label)."""
    import requests
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = requests.get(f"{base}/metrics", timeout=10).text
    except requests.RequestException:
        return {}
    want = ("qvg_kv_bytes", "qvg_kv_bf16_equivalent_bytes", "qvg_kv_effective_compression_ratio")
    out = dict.fromkeys(want, 0.0)
    for fam in text_string_to_metric_families(text):
        if fam.name in out:
            out[fam.name] = sum(s.value for s in fam.samples)
    return out


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
