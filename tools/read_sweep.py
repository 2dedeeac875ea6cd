"""Sweep of the fused paged read (kernels/paged_read_triton.py): variants x launch shapes.

    python tools/read_sweep.py                                # GPU, < 4 min (a minute compiling)
    TRITON_INTERPRET=1 python tools/read_sweep.py --smoke     # CPU: tiny shapes, checks it runs

Pools as `qvg-serve bench attention` builds them (its `_pool`: one stream of `frames` pages,
QVG formats keep --sink-frames bf16 pages), Self-Forcing shapes (pages of 30 x 52 tokens,
12 heads x 128, Wan's 3D RoPE), one layer. One line per (frames, format, variant, block_s,
num_warps): ms per call (CUDA events around --repeat back-to-back calls after a warm-up; CPU:
median wall time), GB/s written (K and V in bf16: 2 * tokens * H * D * 2 bytes) and the max
|ws - ws of per_head at its defaults| on the same batch (0 expected: the variants compute the
same fp32 expressions; inf: a row left unwritten). After each (frames, format) group a `best`
line names its fastest config and the speed-up over the per_head default; the same lines come
again at the end. Configs started past --budget-s are skipped and counted.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import NamedTuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from kernels.paged_read_triton import BLOCK_S, NUM_WARPS, ReadVariant, paged_read  # noqa: E402
from qvg_serve.bench.attention import _pool  # noqa: E402
from qvg_serve.bench.codec import timed  # noqa: E402
from qvg_serve.engine import kv_format as kf  # noqa: E402
from qvg_serve.engine.paged_attention import paged_batch  # noqa: E402
from qvg_serve.models.wan_blocks import WanRope  # noqa: E402


class Config(NamedTuple):
    variant: str
    block_s: int
    num_warps: int

    def __str__(self) -> str:
        return f"{self.variant:8s} bs{self.block_s:3d} w{self.num_warps}"


DEFAULT = Config(ReadVariant.PER_HEAD.value, BLOCK_S, NUM_WARPS)


class Row(NamedTuple):
    frames: int
    fmt: str
    config: Config
    ms: float
    gbps: float
    diff: float


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny shapes, for a CPU check")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--frames", type=int, nargs="+", default=[7, 21, 81])
    p.add_argument("--formats", nargs="+", default=["bf16", "qvg-int2", "qvg-int4"])
    p.add_argument("--variants", nargs="+", default=[v.value for v in ReadVariant])
    p.add_argument("--block-s", type=int, nargs="+", default=[8, 16, 32])
    p.add_argument("--num-warps", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--budget-s", type=float, default=210.0, help="start no config after this")
    p.add_argument("--sink-frames", type=int, default=3)
    p.add_argument("--grid", type=int, nargs=2, default=[30, 52], help="token rows, cols")
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--head-dim", type=int, default=128)
    args = p.parse_args(argv)
    if args.smoke:  # T = 15 tokens: a partial last tile at block_s 8 and 16
        args.frames, args.sink_frames, args.grid, args.heads, args.head_dim = [3], 1, [3, 5], 3, 64
        args.block_s, args.num_warps, args.repeat = [8, 16], [4], 1
    if args.device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        p.error("CPU runs need TRITON_INTERPRET=1 (set before Python starts)")
    return args


def _history(args, kv: kf.KVShape, frames: int, device):
    """Random bf16 K and V [1, H, frames * T, D] (seeded by the frame count)."""
    g = torch.Generator(device=device).manual_seed(frames)
    shape = (1, kv.heads, frames * kv.page_tokens, kv.head_dim)
    return [torch.randn(shape, generator=g, device=device).bfloat16() for _ in "kv"]


def _diff(ws: torch.Tensor, want: torch.Tensor) -> float:
    d = (ws.float() - want.float()).abs()
    return float(d.nan_to_num(nan=float("inf")).max())


def _group(args, kv, frames: int, fmt: str, kv_data, configs, clock) -> tuple[list[Row], int]:
    """Every config on one pool; (rows, configs skipped for the budget)."""
    device = torch.device(args.device)
    pool, pages = _pool(args, kv, frames, fmt, *kv_data, device)
    hist = frames * kv.page_tokens
    hpos = torch.arange(hist, device=device)
    batch, formats = paged_batch(pool, [pool.read_plan(pages)], [hpos], [0])
    rope = WanRope(kv.head_dim, tuple(args.grid)).axial()
    arena = pool.arena["gpu"]
    nan = torch.full((2, hist, kv.heads, kv.head_dim), float("nan"), device=device)
    want = paged_read(arena, formats, batch, 0, nan.bfloat16(), rope, *DEFAULT[1:], DEFAULT[0])
    ws = want.clone()
    written = 2 * hist * kv.heads * kv.head_dim * 2
    rows, skipped = [], 0
    for cfg in configs:
        if time.monotonic() - clock > args.budget_s:
            skipped += 1
            continue
        ws.fill_(float("nan"))

        def read(cfg=cfg):
            return paged_read(arena, formats, batch, 0, ws, rope, cfg.block_s, cfg.num_warps,
                              cfg.variant)  # fmt: skip

        _, ms = timed(read, device, args.repeat)
        row = Row(frames, fmt, cfg, ms, written / ms / 1e6, _diff(ws, want))
        rows.append(row)
        print(f"{_line(row)}  t={time.monotonic() - clock:5.0f}s", flush=True)
    return rows, skipped


def _line(r: Row) -> str:
    return (
        f"  {r.frames:3d} fr {r.fmt:9s} {r.config}  {r.ms:8.3f} ms {r.gbps:6.0f} GB/s"
        f"  diff {r.diff:.3g}"
    )


def _best(rows: list[Row]) -> str:
    best = min(rows, key=lambda r: r.ms)
    base = [r for r in rows if r.config == DEFAULT]
    vs = f"  {base[0].ms / best.ms:.2f}x per_head default" if base else ""
    return f"* best {_line(best).strip()}{vs}"


def run(args: argparse.Namespace) -> list[Row]:
    clock = time.monotonic()
    device = torch.device(args.device)
    rows_, cols = args.grid
    kv = kf.KVShape(1, args.heads, args.head_dim, rows_ * cols)
    configs = [
        Config(ReadVariant(v).value, bs, nw)
        for v in args.variants
        for bs in args.block_s
        for nw in args.num_warps
    ]
    n = len(configs) * len(args.frames) * len(args.formats)
    print(f"paged read sweep: {n} configs on {device}, T={kv.page_tokens}, H={kv.heads}, "
          f"D={kv.head_dim}, default {DEFAULT}", flush=True)  # fmt: skip
    rows, bests, skipped = [], [], 0
    for frames in args.frames:
        kv_data = _history(args, kv, frames, device)
        for fmt in args.formats:
            got, s = _group(args, kv, frames, fmt, kv_data, configs, clock)
            rows, skipped = rows + got, skipped + s
            if got:
                bests.append(_best(got))
                print(bests[-1], flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
        del kv_data
    print("\n".join(["summary:", *bests]))
    worst = max((r.diff for r in rows), default=0.0)
    print(f"{len(rows)} timed, {skipped} skipped (budget {args.budget_s:.0f} s), "
          f"max diff vs per_head {worst:.3g}, {time.monotonic() - clock:.0f} s")  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    rows = run(parse(argv))
    return 0 if all(r.diff == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
