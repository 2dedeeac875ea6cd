"""`qvg-serve bench ladder`: the real engine in a fixed KV arena, BF16-only paging vs the QVG
ladder (eager encoding, commit reservations, lossless-first, admission by projection).

N streams x C chunks are submitted at once to one Engine (any preset, any device; the model
runs for real, through the paged pool). The arena is given in bytes (--arena-bytes) or as a
fraction of the streams' whole BF16 history (--arena-fraction, default 0.5). Each mode runs in
the same arena, same process, same streams:

    bf16        rungs offload/drop/preempt/refuse only, encode_policy "pressure": BF16-only paging
    qvg         every rung, encode_policy "eager" (the default policy)
    qvg-serial  qvg with span encodes after the forward on its stream (overlap_encodes off;
                the same as qvg without CUDA)
    bf16-ample  bf16's rungs in an arena that holds every stream's whole BF16 history plus
                slack (--ample-factor x the BF16 need): the no-pressure throughput baseline

`--encode-batch-bytes 1 --warm-iters 8` reproduces the encode before batching (one codec call
per layer, warm spans at the cold iteration count) for an A/B in the same process.

One JSON row per run: streams, completed, drop, preempt, encode, reencode, offload, wall_s,
video frames/s, peak resident streams, arena bytes, bf16-need bytes. `--sweep` reports per mode
the largest N that completes with zero drops and zero preempts in the fixed arena.

`--simulate` runs scheduler/sim.py instead of the engine, with the engine's pool layout for the
same arena and the same SchedulerConfig and streams: the same decisions (the parity test,
tests/qvg_serve/test_sim_parity.py), no tensors and no model, so any preset runs on a laptop in
seconds. Its rows say "simulated": true and count scheduler steps, not seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from qvg_serve.engine import Engine, EngineConfig, load_runtime
from qvg_serve.engine.config import codec_specs
from qvg_serve.engine.kv_pool import pool_layout
from qvg_serve.models.presets import get_preset
from scheduler.config import SchedulerConfig
from scheduler.sim import Arrival, Simulator, Workload
from scheduler.stream import StreamSpec
from scheduler.vocab import RUNGS, EncodePolicy, Rung, StreamState

MODES = {
    "bf16": dict(rungs=frozenset(RUNGS) - {Rung.ENCODE, Rung.REENCODE}, policy="pressure"),
    "qvg": dict(rungs=frozenset(RUNGS), policy="eager"),
    "qvg-serial": dict(rungs=frozenset(RUNGS), policy="eager", overlap=False),
    "bf16-ample": dict(rungs=frozenset(RUNGS) - {Rung.ENCODE, Rung.REENCODE}, policy="pressure"),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="tiny", help="model preset (tiny, self-forcing-1.3b)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--streams", type=int, default=8)
    p.add_argument("--chunks", type=int, default=8, help="chunks per stream")
    p.add_argument("--arena-bytes", type=int, default=None)
    p.add_argument("--arena-fraction", type=float, default=0.5,
                   help="arena as a fraction of the streams' whole BF16 history")  # fmt: skip
    p.add_argument("--max-batch", type=int, default=4, help="streams per forward pass")
    p.add_argument("--modes", default="bf16,qvg")
    p.add_argument("--eager-span", type=int, default=None, help="eager_span_pages (qvg mode)")
    p.add_argument("--sweep", action="store_true", help="largest zero-loss N per mode")
    p.add_argument("--max-streams", type=int, default=64, help="upper bound of the sweep")
    p.add_argument("--max-steps", type=int, default=200_000)
    p.add_argument("--json", action="store_true")
    p.add_argument("--simulate", action="store_true", help="scheduler/sim.py, no tensors")
    p.add_argument(
        "--no-warmup",
        action="store_true",
        help="skip the untimed warm-up run (kernel compilation) before the modes",
    )
    p.add_argument(
        "--ample-factor",
        type=float,
        default=1.25,
        help="bf16-ample mode: arena = this x the streams' BF16 history",
    )
    p.add_argument(
        "--encode-batch-bytes",
        type=int,
        default=None,
        help="KVPool.encode_batch_bytes (1 = one codec call per layer)",
    )
    p.add_argument(
        "--warm-iters",
        type=int,
        default=None,
        help="k-means iterations of warm-started spans (default: the spec's, 1)",
    )


def bf16_need(mc, chunks: int, streams: int) -> int:
    """Bytes of the streams' whole history in BF16 (K and V, every layer)."""
    page = 2 * mc.layers * mc.tokens_per_frame * mc.heads * mc.head_dim * 2
    return streams * chunks * mc.frames_per_chunk * page


def scheduler_config(mc, args, mode: str, streams: int) -> SchedulerConfig:
    m = MODES[mode]
    return SchedulerConfig(
        max_batch_streams=args.max_batch,
        max_batch_tokens=args.max_batch * mc.chunk_tokens,
        rungs=m["rungs"],
        encode_policy=EncodePolicy(m["policy"]),
        max_waiting=max(64, streams),
        sink_pages=min(3, mc.frames_per_chunk),
        window_pages=mc.frames_per_chunk,
        **({"eager_span_pages": args.eager_span} if args.eager_span and "qvg" in mode else {}),
    )


def simulate_mode(mc, args, mode: str, streams: int, arena: int) -> dict:
    """The same run through scheduler/sim.py: the engine's layout, config and stream specs."""
    cfg = EngineConfig(model=mc.name, kv_cache_memory_bytes=arena)
    specs = codec_specs(cfg, mc.tokens_per_frame)
    layout = pool_layout(mc.kv_shape(), cfg.formats, arena, cfg.cpu_offload_bytes, specs)
    arrivals = tuple(
        Arrival(0, StreamSpec(i + 1, target_chunks=args.chunks, pages_per_chunk=mc.frames_per_chunk,
                              page_tokens=mc.tokens_per_frame, denoise_steps=len(mc.timesteps),
                              frames_per_page=mc.frames_per_latent))
        for i in range(streams)
    )  # fmt: skip
    sim = Simulator(scheduler_config(mc, args, mode, streams), layout, Workload(arrivals))
    peak = 0

    def observe(_out) -> None:
        nonlocal peak
        states = [s.state for s in sim.scheduler.admitted.values()]
        peak = max(peak, sum(1 for st in states if st is not StreamState.PREEMPTED))

    r = sim.run(args.max_steps, observe=observe)
    c = r.counters
    return {
        "mode": mode, "model": mc.name, "streams": streams, "chunks": args.chunks,
        "simulated": True,
        "completed": sum(1 for _, why in r.ended.values() if why == "completed"),
        "drop": c.get("drop", 0), "preempt": c.get("preempt", 0), "encode": c.get("encode", 0),
        "reencode": c.get("reencode", 0), "offload": c.get("offload", 0), "steps": r.steps,
        "peak_resident": peak, "arena_bytes": layout.gpu_blocks * layout.block_bytes,
        "bf16_need_bytes": bf16_need(mc, args.chunks, streams),
    }  # fmt: skip


def run_mode(rt, args, mode: str, streams: int, arena: int) -> dict:
    if args.simulate:
        return simulate_mode(rt, args, mode, streams, arena)
    mc = rt.model.config
    sc = scheduler_config(mc, args, mode, streams)
    cfg = EngineConfig(model=mc.name, kv_cache_memory_bytes=arena, device=str(rt.device),
                       overlap_encodes=MODES[mode].get("overlap", True))  # fmt: skip
    eng = Engine(rt.model, cfg, sc, decoder=rt.decoder, device=rt.device)
    if args.encode_batch_bytes is not None:
        eng.pool.encode_batch_bytes = args.encode_batch_bytes
    if args.warm_iters is not None:
        eng.pool.specs = {
            f: s.with_kmeans(warm_iters=args.warm_iters) if s.kmeans else s
            for f, s in eng.pool.specs.items()
        }
    gen = torch.Generator().manual_seed(0)
    for i in range(streams):
        text = torch.randn(mc.text_len, mc.text_dim, generator=gen)
        _, adm = eng.submit(text, chunks=args.chunks, seed=i)
        if not adm.accepted:
            raise ValueError(f"stream {i} refused at submit ({adm.reason}): raise --max-waiting")
    ends: dict[int, str] = {}
    frames, peak, steps, t0 = 0, 0, 0, time.perf_counter()
    by_kind: dict[str, list[float]] = {}  # "<batch>" / "<batch>+plans" -> step seconds
    sync = torch.cuda.synchronize if rt.device.type == "cuda" else (lambda: None)
    while eng.busy() and steps < args.max_steps:
        ts = time.perf_counter()
        report = eng.step()
        sync()
        key = f"{report.batch}{'+plans' if report.stats.plans_done else ''}"
        by_kind.setdefault(key, []).append(time.perf_counter() - ts)
        steps += 1
        frames += sum(c.frames.shape[0] for _, c in report.chunks)
        ends.update(report.ended)
        kv = eng.kv_stats()
        peak = max(peak, kv.streams.get("running", 0) + kv.streams.get("idle", 0))
    if rt.device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    lad = eng.kv_stats().ladder
    return {
        "mode": mode, "model": mc.name, "streams": streams, "chunks": args.chunks,
        "encode_batch_bytes": eng.pool.encode_batch_bytes,
        "warm_iters": {f: s.kmeans.warm_iters for f, s in eng.pool.specs.items() if s.kmeans},
        "completed": sum(1 for r in ends.values() if r == "completed"),
        "drop": lad.get("drop", 0), "preempt": lad.get("preempt", 0),
        "encode": lad.get("encode", 0), "reencode": lad.get("reencode", 0),
        "offload": lad.get("offload", 0), "steps": steps, "wall_s": round(wall, 3),
        "video_frames_per_s": round(frames / wall, 2) if wall else 0.0,
        "peak_resident": peak, "arena_bytes": eng.kv_stats().total_bytes["gpu"],
        "bf16_need_bytes": bf16_need(mc, args.chunks, streams),
        # per batch size, steps that also executed encode/move plans ("+plans") apart: where
        # the time goes (a QVG run's extra cost = its plan steps' excess + its smaller batches)
        "steps_by_batch": {k: {"n": len(v), "mean_s": round(sum(v) / len(v), 4)}
                           for k, v in sorted(by_kind.items())},
    }  # fmt: skip


def _quiet(*_a, **_k) -> None:
    pass


def lossless(row: dict) -> bool:
    return row["drop"] == 0 and row["preempt"] == 0 and row["completed"] == row["streams"]


def sweep(rt, args, mode: str, arena: int) -> dict:
    """Largest N with zero loss (N doubles until a loss, then a binary search)."""
    good, n, rows = 0, 1, []
    bad = args.max_streams + 1
    while n < bad:
        row = run_mode(rt, args, mode, n, arena)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
        if lossless(row):
            good = n
            n = min(n * 2, args.max_streams + 1) if bad > args.max_streams else (n + bad) // 2
        else:
            bad = n
            n = (good + bad) // 2 if bad - good > 1 else bad
        if bad - good <= 1:
            break
    # admission queues what does not fit, so N streams may complete losslessly a few at a time:
    # the most streams held at once in a lossless run is the capacity figure
    held = max((r["peak_resident"] for r in rows if lossless(r)), default=0)
    return {"mode": mode, "largest_lossless_streams": good, "most_resident_lossless": held,
            "arena_bytes": arena, "runs": rows}  # fmt: skip


def warm_up(rt, args: argparse.Namespace) -> None:
    """One untimed QVG run (a full batch, 4 chunks: denoise, commit and eager encode all run),
    so kernel compilation and allocator growth are not billed to the first timed mode."""
    w = argparse.Namespace(**{**vars(args), "chunks": 4, "warm_iters": None,
                              "encode_batch_bytes": None})  # fmt: skip
    n = min(args.max_batch, args.streams)
    row = run_mode(rt, w, "qvg", n, int(args.ample_factor * bf16_need(rt.model.config, 4, n)))
    print(f"warm-up: {row['streams']} streams x 4 chunks, {row['wall_s']} s", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    if args.simulate:  # no model, no tensors: the preset's shapes are all the layout needs
        rt = mc = get_preset(args.model)
    else:
        rt = load_runtime(EngineConfig(model=args.model, device=args.device), warn=_quiet)
        mc = rt.model.config
    arena = args.arena_bytes or int(args.arena_fraction * bf16_need(mc, args.chunks, args.streams))
    if not args.simulate and not args.no_warmup:
        warm_up(rt, args)
    out = []
    for mode in args.modes.split(","):
        if mode not in MODES:
            print(f"qvg-serve bench ladder: unknown mode {mode!r}; use {sorted(MODES)}")
            return 2
        need = bf16_need(mc, args.chunks, args.streams)
        at = int(args.ample_factor * need) if mode == "bf16-ample" else arena
        row = (
            sweep(rt, args, mode, at) if args.sweep else run_mode(rt, args, mode, args.streams, at)
        )
        out.append(row)
        if not args.json:
            print(json.dumps({k: v for k, v in row.items() if k != "runs"}), flush=True)
    if args.json:
        print(json.dumps(out, indent=1))
    return 0
