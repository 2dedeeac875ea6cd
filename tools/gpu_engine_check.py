"""GPU check of the whole engine at Self-Forcing-1.3B shapes (not a test, not a benchmark).

    python tools/gpu_engine_check.py        # prints JSON; writes $OUT/engine.json if OUT is set

Random bf16 weights, random text embeddings [512, 4096]. Three streams (3, 2 and 2 chunks,
the third submitted two steps later) go through the real scheduler and the paged pool: once
with roomy watermarks (bf16 pages only) and once with low ones, so the ladder encodes
committed pages with the Triton QVG kernels while the streams run. Reports steps, batch
sizes, wall time per step, ladder counters, and that every page is free at the end.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from qvg_serve.engine.config import EngineConfig
from qvg_serve.engine.engine import Engine
from qvg_serve.models import build_model, get_preset
from scheduler.config import SchedulerConfig


def run(model, watermarks: tuple[float, float], label: str) -> dict:
    mc = model.config
    cfg = EngineConfig(model=mc.name, device="cuda", kv_cache_memory_bytes=24 << 30)
    sc = SchedulerConfig(
        max_batch_streams=4,
        max_batch_tokens=4 * mc.chunk_tokens,
        high_watermark=watermarks[0],
        low_watermark=watermarks[1],
    )
    eng = Engine(model, cfg, sc, device="cuda")
    gen = torch.Generator().manual_seed(0)
    text = [torch.randn(mc.text_len, mc.text_dim, generator=gen) for _ in range(3)]
    ids = [eng.submit(text[0], chunks=3, seed=0)[0], eng.submit(text[1], chunks=2, seed=1)[0]]
    steps, batches, t0 = 0, [], time.perf_counter()
    chunks: dict[int, int] = {}
    ends: dict[int, str] = {}
    while eng.busy():
        rep = eng.step()
        steps += 1
        batches.append(rep.batch)
        for sid, _ in rep.chunks:
            chunks[sid] = chunks.get(sid, 0) + 1
        ends.update(rep.ended)
        if steps == 2:
            ids.append(eng.submit(text[2], chunks=2, seed=2)[0])
    torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    eng.check_invariants()
    kv = eng.kv_stats()
    return {
        "run": label,
        "steps": steps,
        "max_batch": max(batches),
        "wall_s": round(wall, 2),
        "s_per_step": round(wall / steps, 3),
        "chunks": chunks,
        "ends": ends,
        "ladder": kv.ladder,
        "pages_left": sum(kv.pages.values()),
    }


def main() -> None:
    mc = get_preset("self-forcing-1.3b")
    model = build_model(mc, "cuda", torch.bfloat16, seed=0).eval()
    out = [run(model, (0.9, 0.8), "bf16 pages"), run(model, (0.2, 0.1), "ladder encodes")]
    text = json.dumps(out, indent=1)
    print(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "engine.json").write_text(text)


if __name__ == "__main__":
    main()
