"""`qvg-serve bench attention`: one chunk's attention over paged history vs a dense BF16 cache.

Self-Forcing-1.3B shapes by default: a chunk of 3 latent frames (4,680 queries) attends to
21 frames of history (32,760 tokens) plus itself, 12 heads x 128, one layer. Rows:
  dense-bf16   contiguous bf16 K/V (RoPE applied once), one attention call
  pool-bf16    history read from bf16 pages (gather + RoPE) + attention
  pool-<fmt>   history decoded from quantized pages (sink pages bf16) + RoPE + attention
Times are medians over `--repeat` runs (CUDA events on GPU); the ratio is vs dense-bf16.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from qvg_serve.bench.codec import timed
from qvg_serve.engine import kv_format as kf
from qvg_serve.engine.kv_pool import KVPool, pool_layout
from qvg_serve.engine.paged_attention import (
    StreamChunk,
    Workspace,
    batch_attention,
    rope_1d,
    xformers_ops,
)
from scheduler.pages import PageAllocator


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--history-frames", type=int, default=21)
    p.add_argument("--chunk-frames", type=int, default=3)
    p.add_argument("--sink-frames", type=int, default=3)
    p.add_argument("--tokens-per-frame", type=int, default=1560)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--formats", nargs="+", default=["qvg-int2"])
    p.add_argument("--repeat", type=int, default=None)
    p.add_argument("--json", action="store_true")


def _pool(args, kv: kf.KVShape, fmt: str | None, k, v, device):
    frames = args.history_frames
    book = kf.codebook_bytes(fmt, kv) if fmt else 0
    budget = 3 * (frames + 1) * kf.page_bytes("bf16", kv) + 4 * book
    alloc = PageAllocator(pool_layout(kv, ["bf16"] + ([fmt] if fmt else []), budget))
    pool = KVPool(kv, alloc, device)
    pages = alloc.allocate(1, "bf16", frames)
    pool.write_pages(pages, k, v)
    if fmt:
        plan = alloc.begin_encode(1, pages[args.sink_frames :], fmt)
        if not hasattr(plan, "relocations"):
            raise RuntimeError(f"bench pool too small for {fmt}: {plan}")
        pool.execute(plan)
        alloc.commit(plan)
    return pool, pages


def run(args: argparse.Namespace) -> int:
    device = torch.device(args.device)
    kv = kf.KVShape(1, args.heads, args.head_dim, args.tokens_per_frame)
    hist = args.history_frames * kv.page_tokens
    lq = args.chunk_frames * kv.page_tokens
    g = torch.Generator().manual_seed(0)
    shape = (1, kv.heads, hist, kv.head_dim)
    k, v = (torch.randn(shape, generator=g).bfloat16().to(device) for _ in range(2))
    q, kn, vn = (
        torch.randn(lq, kv.heads, kv.head_dim, generator=g).bfloat16().to(device) for _ in range(3)
    )
    hpos, qpos = torch.arange(hist, device=device), torch.arange(hist, hist + lq, device=device)
    repeat = args.repeat or (20 if device.type == "cuda" else 2)
    rows = [_dense_row(q, kn, vn, k, v, hpos, qpos, device, repeat)]
    ws = Workspace(hist + lq, kv.heads, kv.head_dim, device)
    for fmt in [None, *args.formats]:
        pool, pages = _pool(args, kv, fmt, k, v, device)
        sc = StreamChunk(q, kn, vn, pool.read_plan(pages), hpos, qpos)
        _, ms = timed(lambda pool=pool, sc=sc: batch_attention(pool, 0, [sc], ws), device, repeat)
        attn = "xformers" if xformers_ops() is not None and device.type == "cuda" else "sdpa"
        rows.append({"path": f"pool-{fmt or 'bf16'}", "ms": ms, "attention": attn})
    for r in rows:
        r.update(
            ratio_vs_dense=r["ms"] / rows[0]["ms"],
            device=str(device),
            queries=lq,
            history_tokens=hist,
        )
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(f"one layer: {lq} queries over {hist} history tokens on {device}")
        for r in rows:
            print(f"  {r['path']:16s} {r['ms']:8.3f} ms  {r['ratio_vs_dense']:5.2f}x")
    return 0


def _dense_row(q, kn, vn, k, v, hpos, qpos, device, repeat) -> dict:
    import torch.nn.functional as F

    def step():
        kk = torch.cat([rope_1d(k[0].transpose(0, 1), hpos), rope_1d(kn, qpos)]).transpose(0, 1)
        vv = torch.cat([v[0].transpose(0, 1), vn]).transpose(0, 1)
        qq = rope_1d(q, qpos).transpose(0, 1)
        return F.scaled_dot_product_attention(qq[None], kk[None], vv[None])

    _, ms = timed(step, device, repeat)
    return {"path": "dense-bf16", "ms": ms, "attention": "sdpa"}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run(argparse.Namespace()))
