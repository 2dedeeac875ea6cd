"""`qvg-serve bench capacity`: frames of history that fit in a KV budget, per page format.

Exact arithmetic, no GPU: page and codebook bytes come from `kv_format` (what the pool
allocates), and the count goes through the scheduler's slab layout (`PoolLayout`), so slack in
typed blocks is paid for. QVG formats keep `--sink-frames` and `--window-frames` in bf16 (the
pool's policy) and encode the rest in spans of `--span-frames` pages that share one codebook.
"""

from __future__ import annotations

import argparse
import json

from qvg_serve.engine import kv_format as kf
from qvg_serve.engine.kv_pool import pool_layout
from scheduler.pages import PoolLayout, codebook_kind

GIB = 1 << 30
MODELS = {
    # 30 blocks, 12 heads x 128, 480x832 video -> 30x52 = 1,560 tokens per latent frame
    "self-forcing-1.3b": kf.KVShape(layers=30, heads=12, head_dim=128, page_tokens=1560),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", choices=sorted(MODELS), default="self-forcing-1.3b")
    p.add_argument("--budget-gib", type=float, default=40.0, help="KV arena size")
    p.add_argument("--formats", nargs="+", default=["bf16", "qvg-int4", "qvg-int2", "qvg-pro-int2"])
    p.add_argument("--sink-frames", type=int, default=3, help="first frames kept bf16 (sink)")
    p.add_argument("--window-frames", type=int, default=3, help="newest frames kept bf16")
    p.add_argument("--span-frames", type=int, default=24, help="pages per encoded span")
    p.add_argument("--json", action="store_true")


def _fits(layout: PoolLayout, demands: dict[str, int]) -> bool:
    blocks = 0
    for kind, n in demands.items():
        blocks += -(-n // layout.items_per_block(kind)) if n else 0
    return blocks <= layout.gpu_blocks


def frames_fit(kv: kf.KVShape, fmt: str, budget: int, sink: int, window: int, span: int) -> int:
    """Most frames of one stream's history the budget holds under the bf16-sink/window policy."""
    layout = pool_layout(kv, ["bf16"] if fmt == "bf16" else ["bf16", fmt], budget)
    page = layout.page_bytes

    def ok(frames: int) -> bool:
        if fmt == "bf16":
            return _fits(layout, {"bf16": frames})
        hot = min(frames, sink + window)
        cold = frames - hot
        return _fits(layout, {"bf16": hot, fmt: cold, codebook_kind(fmt): -(-cold // span)})

    lo, hi = 0, budget // min(page.values()) + 1
    while lo < hi:  # largest frames with ok(frames)
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid - 1)
    return lo


def rows(args: argparse.Namespace) -> list[dict]:
    kv = MODELS[args.model]
    budget = int(args.budget_gib * GIB)
    out = []
    for fmt in args.formats:
        per_frame = kf.page_bytes(fmt, kv) + kf.codebook_bytes(fmt, kv) / args.span_frames
        n = frames_fit(kv, fmt, budget, args.sink_frames, args.window_frames, args.span_frames)
        out.append({"format": fmt, "bytes_per_frame": round(per_frame), "frames_fit": n})
    base = next((r["frames_fit"] for r in out if r["format"] == "bf16"), None)
    for r in out:
        r["ratio_vs_bf16"] = r["frames_fit"] / base if base else None
        r.update(model=args.model, budget_gib=args.budget_gib)
    return out


def run(args: argparse.Namespace) -> int:
    try:
        result = rows(args)
    except ValueError as exc:
        print(f"qvg-serve bench capacity: {exc}")
        return 2
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(
        f"{args.model}, {args.budget_gib} GiB KV budget (sink {args.sink_frames} + window "
        f"{args.window_frames} frames bf16, spans of {args.span_frames})"
    )
    for r in result:
        ratio = f"{r['ratio_vs_bf16']:.2f}x" if r["ratio_vs_bf16"] else "-"
        print(
            f"  {r['format']:14s} {r['bytes_per_frame'] / 2**20:9.2f} MiB/frame "
            f"{r['frames_fit']:7d} frames  {ratio}"
        )
    return 0
