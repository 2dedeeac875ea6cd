"""`qvg-serve bench scheduler`: scheduler step time, and simulated KV capacity with the ladder.

Standard library + `scheduler` only (never torch): it runs anywhere in seconds.

Timing: N open streams (each commits 3 chunks, then alternates long idle periods with one
more chunk, so most are idle and a few active at any time) on a pool sized to keep the ladder
busy; the time of schedule() + update() per step is measured with time.perf_counter. The
workload is deterministic, so with --repeat R it runs R times and each step keeps its fastest
time: on a shared machine that strips the steps the OS preempted, which otherwise set the p99.

Capacity (--capacity, SIMULATED: page accounting only, no tensors): at Self-Forcing-1.3B page
sizes on a KV budget, how many streams stay resident with their whole history on the GPU, with
the ladder (QVG encodes) vs BF16-only paging, for 21-frame streams and for 60 s streams.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys

from scheduler.config import RUNGS, SchedulerConfig
from scheduler.layout import PoolLayout
from scheduler.sim import Arrival, Simulator, Workload, median, percentile
from scheduler.stream import StreamSpec

# Self-Forcing-1.3B (Wan2.1): 30 layers, 12 heads x 128, 1,560 tokens per latent frame.
BF16_PAGE = 2 * 30 * 1560 * 12 * 128 * 2  # K and V, bf16
INT4_PAGE = 1560 * 12 * 60 * (64 + 2 + 1)  # per token, head, layer x K/V: codes + scale + ids
INT2_PAGE = 1560 * 12 * 60 * (32 + 2 + 1)
CODEBOOK = 2 * 30 * 12 * 256 * 128 * 2  # per span: K/V x layers x heads x C=256 x D=128, bf16
GIB = 1 << 30


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--streams", type=int, default=256, help="open streams to time")
    parser.add_argument("--steps", type=int, default=2000, help="timed steps")
    parser.add_argument(
        "--pool-pages", type=float, default=8.0, help="timing pool, BF16 pages per stream"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs of the same workload; per-step minimum"
    )
    parser.add_argument("--capacity", action="store_true", help="add the capacity simulation")
    parser.add_argument("--budget-gib", type=float, default=70.0, help="GPU KV budget (GiB)")
    parser.add_argument("--bf16-page-bytes", type=int, default=BF16_PAGE)
    parser.add_argument("--int4-page-bytes", type=int, default=INT4_PAGE)
    parser.add_argument("--int2-page-bytes", type=int, default=INT2_PAGE)
    parser.add_argument("--codebook-bytes", type=int, default=CODEBOOK, help="per span")
    parser.add_argument("--sink-pages", type=int, default=3)
    parser.add_argument("--window-pages", type=int, default=3)


def _sizes(args: argparse.Namespace) -> tuple[dict[str, int], dict[str, int]]:
    pages = {
        "bf16": args.bf16_page_bytes,
        "qvg-int4": args.int4_page_bytes,
        "qvg-int2": args.int2_page_bytes,
    }
    return pages, {"qvg-int4": args.codebook_bytes, "qvg-int2": args.codebook_bytes}


def timing(args: argparse.Namespace) -> dict[str, object]:
    """Median and p99 of schedule() + update() with `args.streams` open streams."""
    n = args.streams
    pages, codebooks = _sizes(args)
    # A pool of --pool-pages BF16 pages per stream: streams grow past it, so the ladder works.
    budget = max(64, int(n * args.pool_pages)) * args.bf16_page_bytes
    layout = PoolLayout.from_budget(pages, codebooks, budget)
    idle = max(40, n // 2)  # a stream is active ~1 chunk (5 passes) per `idle` steps
    arrivals = tuple(
        Arrival(
            i // 4,
            StreamSpec(i + 1, target_chunks=None),
            pauses=tuple((3 + k, idle + (i * 7) % idle) for k in range(10_000)),
        )
        for i in range(n)
    )
    config = SchedulerConfig(
        sink_pages=args.sink_pages, window_pages=args.window_pages, max_ladder_candidates=32
    )
    warm = n // 4 + 20
    runs = []
    for _ in range(max(1, args.repeat)):
        sim = Simulator(config, layout, Workload(arrivals), debug=False)
        result = sim.run(warm + args.steps)
        runs.append(result.step_seconds[warm:])
    times = [min(step) * 1e3 for step in zip(*runs, strict=True)]
    return {
        "streams": n,
        "pool_bf16_pages_per_stream": args.pool_pages,
        "steps_timed": len(times),
        "repeats": max(1, args.repeat),
        "step_p50_ms": round(median(times), 4),
        "step_p99_ms": round(percentile(times, 99), 4),
        "step_max_ms": round(max(times), 4),
        "live_streams_end": len(sim.scheduler.streams),
        "ladder_counters": dict(sorted(result.counters.items())),
    }


def capacity(args: argparse.Namespace, frames: int, ladder: bool) -> dict[str, object]:
    """Simulated: most streams of `frames` latent frames held intact on the GPU at once."""
    pages, codebooks = _sizes(args)
    budget = int(args.budget_gib * GIB)
    layout = PoolLayout.from_budget(pages, codebooks, budget)
    rungs = set(RUNGS) if ladder else {"drop", "preempt", "refuse"}
    # Lossy rungs off: a stream that would lose history counts as not held (we measure holding).
    rungs -= {"drop", "preempt"}
    config = SchedulerConfig(
        sink_pages=args.sink_pages,
        window_pages=args.window_pages,
        min_span_pages=3,
        rungs=frozenset(rungs),
        max_batch_streams=2,
        max_waiting=1,
        encode_policy="eager" if ladder else "pressure",  # bf16 only: round 1's paging
    )
    chunks = -(-frames // 3)
    per_stream_steps = chunks * 5
    # Short streams: two generate at a time; long ones one at a time (else neither finishes).
    spacing = per_stream_steps // 2 + 1 if frames < 100 else per_stream_steps + 1
    arrivals = tuple(
        Arrival(
            i * spacing,
            StreamSpec(i + 1, target_chunks=None, denoise_steps=4),
            pauses=((chunks, -1),),
        )
        for i in range(64 if frames < 100 else 16)
    )
    sim = Simulator(config, layout, Workload(arrivals), debug=False, resident_pages=frames)
    result = sim.run(arrivals[-1].step + 1)
    return {
        "frames_per_stream": frames,
        "paging": "qvg ladder" if ladder else "bf16 only",
        "streams_held": result.max_resident,
        "budget_gib": args.budget_gib,
        "counters": dict(sorted(result.counters.items())),
    }


def run(args: argparse.Namespace) -> int:
    out: dict[str, object] = timing(args)
    out["python"] = platform.python_version()
    if args.capacity:
        rows = [capacity(args, f, ladder) for f in (21, 240) for ladder in (False, True)]
        out["capacity_simulated"] = rows
        out["capacity_note"] = (
            "SIMULATED: scheduler + page accounting at Self-Forcing-1.3B page sizes "
            f"(bf16 {args.bf16_page_bytes} B, qvg-int2 {args.int2_page_bytes} B, "
            f"codebook {args.codebook_bytes} B per span); no tensors were allocated"
        )
    if args.json:
        print(json.dumps(out))
    else:
        for key, value in out.items():
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    parser = argparse.ArgumentParser(prog="qvg-serve bench scheduler")
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
