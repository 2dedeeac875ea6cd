"""`qvg-serve bench e2e`: time per chunk through the paged pool (bf16 pages, QVG pages) against
a Self-Forcing-style dense cache, same model, weights and process; N streams in one batch.

Default: Self-Forcing-1.3B shapes (30 blocks, 1536 wide, 12 x 128 heads, 1,560 tokens per
latent frame, 3 frames per chunk, 4 denoising steps + commit) with random bf16 weights on CUDA.
A chunk = 4 denoising passes + the commit pass, each one forward of the model. Rows:
  dense   `DenseSFContext`: post-RoPE K/V in a preallocated buffer, RoPE on the chunk only,
          one SDPA call per layer (what users run today; the yardstick)
  <fmt>   `PagedContext` over pool pages of that format (bf16, or QVG with `--sink-frames`
          bf16 pages and the rest one span), as the engine runs it
History holds random K/V (timing does not depend on the values). Times are medians of
`--repeat` chunks after a warm-up; ratios are against the dense row.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from qvg_serve.bench.dense_sf import DenseCache, DenseSFContext
from qvg_serve.engine import kv_format as kf
from qvg_serve.engine.kv_pool import KVPool, pool_layout
from qvg_serve.engine.paged_attention import Workspace
from qvg_serve.engine.paged_context import Entry, PagedContext
from qvg_serve.models import build_model, get_preset
from qvg_serve.models.base import ChunkInput, chunk_positions
from scheduler.pages import PageAllocator, codebook_kind


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="self-forcing-1.3b")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--history", type=int, nargs="+", default=[7, 21, 81], help="latent frames")
    p.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--batch-history", type=int, default=21, help="history of the batch rows")
    p.add_argument("--formats", nargs="+", default=["bf16", "qvg-int2", "qvg-int4"])
    p.add_argument("--batch-format", default="qvg-int2", help="pool format of the batch rows")
    p.add_argument("--sink-frames", type=int, default=3)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument(
        "--read-ahead", action="store_true", help="pool rows with EngineConfig.read_ahead on"
    )
    p.add_argument("--json", action="store_true")


class Bench:
    """A model, a pool with streams of given histories, and a timed chunk loop."""

    def __init__(self, args, histories: list[int], fmt: str | None):
        self.args, self.dev = args, torch.device(args.device)
        self.mc = get_preset(args.model)
        dtype = torch.bfloat16 if self.dev.type == "cuda" else torch.float32
        self.model = MODEL_CACHE.get((args.model, args.device)) or build_model(
            self.mc, self.dev, dtype, seed=0
        )
        MODEL_CACHE[(args.model, args.device)] = self.model
        self.text = torch.randn(self.mc.text_len, self.mc.text_dim, device=self.dev, dtype=dtype)
        self.histories, self.fmt = histories, fmt
        tokens = (max(histories) + self.mc.frames_per_chunk) * self.mc.tokens_per_frame
        if fmt == "dense":
            if len(set(histories)) != 1:
                raise ValueError("the dense rows batch streams of equal history only")
            mc = self.mc
            self.dense = DenseCache(
                mc.layers, len(histories), tokens, mc.heads, mc.head_dim, self.dev, dtype
            )
            return
        fmt = None if fmt == "bf16" else fmt
        kv = self.mc.kv_shape()
        fmts = ["bf16"] + ([fmt] if fmt else [])
        budget = self._budget(kv, histories, fmt)
        self.alloc = PageAllocator(pool_layout(kv, fmts, budget))
        self.pool = KVPool(kv, self.alloc, self.dev)
        self.tables = [self._stream(i + 1, h, fmt) for i, h in enumerate(histories)]
        self.ws = Workspace(  # as the engine's: EngineConfig.read_ahead
            tokens * len(histories), self.mc.heads, self.mc.head_dim, self.dev, dtype,
            self.args.read_ahead,
        )  # fmt: skip

    def _budget(self, kv: kf.KVShape, histories: list[int], fmt: str | None) -> int:
        """Arena for the streams after encoding, plus one stream's bf16 pages in flight
        (each stream is written bf16, then encoded, before the next one is written),
        counted in whole slab blocks of the pool's own layout."""
        fmts = ["bf16"] + ([fmt] if fmt else [])
        lay = pool_layout(kv, fmts, 1 << 50)  # only for block and item sizes
        if fmt is None:
            return (sum(histories) + 2 * len(histories)) * lay.block_bytes
        sink, per = self.args.sink_frames, lay.items_per_block(fmt)
        cold = sum(max(0, h - sink) for h in histories)
        blocks = sum(min(h, sink) for h in histories) + -(-cold // per) + len(histories)
        blocks += -(-len(histories) // lay.items_per_block(codebook_kind(fmt))) + 1
        return (blocks + max(histories) + 2) * lay.block_bytes

    def _stream(self, sid: int, frames: int, fmt: str | None) -> list[int]:
        pages = list(self.alloc.allocate(sid, "bf16", frames))
        mc = self.mc
        shape = (mc.layers, mc.heads, mc.tokens_per_frame, mc.head_dim)
        for p in pages:  # one page at a time: bounded temporary memory
            k, v = (torch.randn(shape, device=self.dev).bfloat16() for _ in range(2))
            self.pool.write_pages([p], k, v)
        cold = pages[self.args.sink_frames :]
        if fmt and cold:
            plan = self.alloc.begin_encode(sid, cold, fmt)
            if not hasattr(plan, "relocations"):
                raise RuntimeError(f"pool too small to encode: {plan}")
            self.pool.execute(plan)
            self.alloc.commit(plan)
        return pages

    def chunk(self, rows: list[int]) -> None:
        """One chunk (4 denoising passes + commit) for the streams `rows`, batched."""
        mc = self.mc
        x = torch.randn(
            mc.in_channels,
            mc.frames_per_chunk,
            mc.latent_height,
            mc.latent_width,
            device=self.dev,
            dtype=self.text.dtype,
        )
        for t in (*mc.timesteps, 0.0):
            if self.fmt == "dense":
                start = self.histories[0]
                inputs = [ChunkInput(x, t, self.text, start) for _ in rows]
                qpos = chunk_positions(mc, start, self.dev)
                hist = start * mc.tokens_per_frame
                ctx = DenseSFContext(self.dense, self.model.axial_rope(), hist, qpos, len(rows))
                with torch.no_grad():
                    self.model.forward(inputs, ctx)
                continue
            entries, inputs = [], []
            for r in rows:
                table = self.tables[r]
                start = len(table)
                hist = self.pool.read_plan(table)
                hpos = torch.arange(start * mc.tokens_per_frame, device=self.dev)
                qpos = chunk_positions(mc, start, self.dev)
                entries.append(Entry(hist, hpos, qpos, t == 0.0))
                inputs.append(ChunkInput(x, t, self.text, start))
            ctx = PagedContext(self.pool, self.ws, self.model.rope, entries)
            with torch.no_grad():
                self.model.forward(inputs, ctx)

    def time_chunk(self, rows: list[int]) -> float:
        """Median seconds of one chunk for `rows` batched."""
        self.chunk(rows)  # warm-up (compiles, allocator)
        times = []
        for _ in range(self.args.repeat):
            _sync(self.dev)
            t0 = time.perf_counter()
            self.chunk(rows)
            _sync(self.dev)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)


MODEL_CACHE: dict = {}


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _timed(args, histories: list[int], fmt: str, rows: list[list[int]]) -> list[float]:
    """Median chunk seconds of `fmt` for each row set, then the bench's memory is freed."""
    b = Bench(args, histories, fmt)
    out = [b.time_chunk(r) for r in rows]
    del b
    if torch.device(args.device).type == "cuda":
        torch.cuda.empty_cache()
    return out


def overhead_rows(args) -> list[dict]:
    rows = []
    for h in args.history:
        t = {f: _timed(args, [h], f, [[0]])[0] for f in ("dense", *args.formats)}
        row = {"bench": "chunk", "history_frames": h, "dense_s": t["dense"]}
        for f in args.formats:
            row[f"{f}_s"], row[f"{f}_vs_dense"] = t[f], t[f] / t["dense"]
        rows.append(row)
    return rows


def batch_rows(args) -> list[dict]:
    rows, mc, fmt = [], get_preset(args.model), args.batch_format
    video_frames = mc.frames_per_chunk * mc.frames_per_latent
    for n in args.streams:
        hist = [args.batch_history] * n
        dense_b, dense_1 = _timed(args, hist, "dense", [list(range(n)), [0]])
        (pool_b,) = _timed(args, hist, fmt, [list(range(n))])
        rows.append(
            {
                "bench": "batch",
                "streams": n,
                "history_frames": args.batch_history,
                "dense_batched_s": dense_b,
                "dense_single_x_n_s": dense_1 * n,
                f"{fmt}_batched_s": pool_b,
                "vs_dense_batched": pool_b / dense_b,
                "vs_n_dense_singles": pool_b / (dense_1 * n),
                "frames_per_s": n * video_frames / pool_b,
            }
        )
    return rows


def run(args: argparse.Namespace) -> int:
    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    log(
        f"{args.model} on {args.device}: chunk = {len(get_preset(args.model).timesteps)} "
        f"denoising passes + commit"
    )
    rows = overhead_rows(args) + batch_rows(args)
    for r in rows:
        r.update(model=args.model, device=str(args.device))
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    for r in rows:
        if r["bench"] == "chunk":
            cells = "  ".join(
                f"{f} {r[f + '_s'] * 1e3:8.1f} ms ({r[f + '_vs_dense']:.2f}x)" for f in args.formats
            )
            log(f"  history {r['history_frames']:3d}: dense {r['dense_s'] * 1e3:8.1f} ms  {cells}")
        else:
            f = args.batch_format
            log(
                f"  {r['streams']} streams: {f} batched {r[f + '_batched_s'] * 1e3:8.1f} ms, "
                f"dense batched {r['dense_batched_s'] * 1e3:8.1f} ms "
                f"({r['vs_dense_batched']:.2f}x), N dense singles "
                f"{r['dense_single_x_n_s'] * 1e3:8.1f} ms ({r['vs_n_dense_singles']:.2f}x)"
            )
    return 0
