"""`qvg-serve generate`: the offline path (no Ray). All prompts go into one engine and are
batched together; one MP4 per prompt is written into --out, with progress on stderr."""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

from qvg_serve.engine.config import EngineConfig
from qvg_serve.engine.engine import Engine
from qvg_serve.engine.runtime import load_runtime
from qvg_serve.serve.video import write_mp4
from scheduler.config import SchedulerConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompt", action="append", required=True, help="repeat for more videos")
    p.add_argument("--frames", type=int, default=48, help="video frames per prompt (>= 1)")
    p.add_argument("--out", type=Path, required=True, help="folder for the MP4s")
    p.add_argument("--model", default=EngineConfig().model)
    p.add_argument("--weights", default=None, help="checkpoint (default: shipped or random)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0, help="seed of the first prompt (+1 each)")
    p.add_argument("--fps", type=float, default=None, help="default: 8 (tiny), 16 (Wan)")
    p.add_argument("--kv-cache-mib", type=int, default=256, help="KV arena size")
    p.add_argument("--quiet", action="store_true")


def chunks_for(frames: int, frames_per_chunk: int, frames_per_latent: int = 4) -> int:
    """Chunks needed for `frames` video frames (each latent frame decodes to 4 frames)."""
    if frames < 1:
        raise ValueError(f"--frames {frames}: must be >= 1")
    return math.ceil(frames / (frames_per_chunk * frames_per_latent))


def run(args: argparse.Namespace) -> int:
    cfg = EngineConfig(
        model=args.model,
        weights=args.weights,
        device=args.device,
        kv_cache_memory_bytes=args.kv_cache_mib << 20,
    )
    try:
        rt = load_runtime(cfg, warn=lambda *a, **k: None if args.quiet else print(*a, **k))
        texts = rt.text_encoder.encode(args.prompt)
        n_chunks = chunks_for(
            args.frames, rt.model.config.frames_per_chunk, rt.model.config.frames_per_latent
        )
    except ValueError as exc:
        print(f"qvg-serve generate: {exc}", file=sys.stderr)
        return 2
    mc = rt.model.config
    sched = SchedulerConfig(
        max_batch_streams=max(4, len(args.prompt)),
        max_batch_tokens=max(4, len(args.prompt)) * mc.chunk_tokens,
    )
    engine = Engine(rt.model, cfg, sched, decoder=rt.decoder, device=rt.device)
    ids = []
    for i, text in enumerate(texts):
        sid, adm = engine.submit(text, chunks=n_chunks, seed=args.seed + i)
        if not adm.accepted:
            print(f"qvg-serve generate: prompt {i} refused ({adm.reason})", file=sys.stderr)
            return 1
        ids.append(sid)
    frames = {sid: [] for sid in ids}
    total, t0 = n_chunks * len(ids), time.time()
    ended: dict[int, str] = {}
    while engine.busy():
        report = engine.step()
        for sid, chunk in report.chunks:
            frames[sid].append(chunk.frames)
        ended.update(report.ended)
        if not args.quiet:
            _progress(sum(len(f) for f in frames.values()), total, t0)
    lost = {sid: why for sid, why in ended.items() if why != "completed"}
    if lost:
        print(f"qvg-serve generate: streams ended early: {lost}", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    for i, sid in enumerate(ids):
        if not frames[sid]:
            continue
        video = torch.cat(frames[sid])[: args.frames]
        fps = args.fps or (8.0 if mc.frames_per_latent == 1 else 16.0)
        path = write_mp4(video, args.out / f"video_{i:02d}.mp4", fps)
        print(f"{path}  ({video.shape[0]} frames, {args.prompt[i]!r})")
    return 0


def _progress(done: int, total: int, t0: float) -> None:
    width = 30
    filled = width * done // max(total, 1)
    bar = "#" * filled + "." * (width - filled)
    end = "\n" if done >= total else ""
    print(f"\r[{bar}] {done}/{total} chunks  {time.time() - t0:6.1f}s", end=end, file=sys.stderr)
