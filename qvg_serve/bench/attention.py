"""`qvg-serve bench attention`: one layer's attention of a chunk over paged history vs the
dense cache a user runs today, same process, same K/V.

Self-Forcing-1.3B shapes by default: a chunk of 3 latent frames (4,680 queries, 12 heads x
128, Wan's 3D RoPE on a 30 x 52 grid) attends to H frames of history (H = 7, 21, 81) plus
itself. Rows, per history length:
  sdpa-dense     torch SDPA over a dense post-RoPE bf16 cache [history | chunk]: the floor
  dense-sf       Self-Forcing style: RoPE on the chunk's q and k only, k/v written into the
                 preallocated post-RoPE cache (the same fused chunk pass as the pool's:
                 kernels.chunk_rope_triton), then the same SDPA
  read-<fmt>     the fused paged read alone (all pages -> post-RoPE workspace), GB/s written
  pool-<fmt>     the pool path per layer as the engine runs it: `--layers` layers back to
                 back on one step's `BatchRead` (`attend`: fused read + chunk RoPE + one
                 attention call), time / layers; <fmt> pages hold all history but
                 `--sink-frames` bf16
  ahead-<fmt>    the same loop with `EngineConfig.read_ahead` (CUDA: layer L + 1 read on a
                 side stream while layer L attends; a second workspace)
Times: CUDA events around `--repeat` back-to-back calls (mean); ratios vs sdpa-dense and
dense-sf.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from qvg_serve.bench.codec import timed
from qvg_serve.engine import kv_format as kf
from qvg_serve.engine.kv_pool import KVPool, pool_layout
from qvg_serve.engine.paged_attention import BatchRead, ChunkRope, Workspace
from qvg_serve.models.wan_blocks import WanRope
from scheduler.pages import PageAllocator


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--history-frames", type=int, nargs="+", default=[7, 21, 81])
    p.add_argument("--chunk-frames", type=int, default=3)
    p.add_argument("--sink-frames", type=int, default=3)
    p.add_argument("--grid", type=int, nargs=2, default=[30, 52], help="token rows, cols")
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--formats", nargs="+", default=["qvg-int2", "qvg-int4"])
    p.add_argument("--repeat", type=int, default=None)
    p.add_argument(
        "--layers", type=int, default=4, help="layers per pool call (each holds the same K/V)"
    )
    p.add_argument("--json", action="store_true")


def _pool(args, kv: kf.KVShape, frames: int, fmt: str, k, v, device):
    quant = fmt != "bf16"
    book = kf.codebook_bytes(fmt, kv) if quant else 0
    budget = 3 * (frames + 1) * kf.page_bytes("bf16", kv) + 4 * book
    alloc = PageAllocator(pool_layout(kv, ["bf16"] + ([fmt] if quant else []), budget))
    pool = KVPool(kv, alloc, device)
    pages = alloc.allocate(1, "bf16", frames)
    pool.write_pages(pages, k, v)
    if quant and frames > args.sink_frames:
        plan = alloc.begin_encode(1, pages[args.sink_frames :], fmt)
        if not hasattr(plan, "relocations"):
            raise RuntimeError(f"bench pool too small for {fmt}: {plan}")
        pool.execute(plan)
        alloc.commit(plan)
    return pool, pages


def _rows_for(args, frames: int, device, repeat: int) -> list[dict]:
    rows_, cols = args.grid
    kv = kf.KVShape(args.layers, args.heads, args.head_dim, rows_ * cols)
    hist, lq = frames * kv.page_tokens, args.chunk_frames * kv.page_tokens
    rope = WanRope(kv.head_dim, (rows_, cols)).axial()
    g = torch.Generator().manual_seed(frames)
    k, v = (torch.randn(1, kv.heads, hist, kv.head_dim, generator=g).bfloat16() for _ in "kv")
    k, v = k.to(device), v.to(device)
    q, kn, vn = (
        torch.randn(lq, kv.heads, kv.head_dim, generator=g).bfloat16().to(device) for _ in "qkv"
    )
    hpos, qpos = torch.arange(hist, device=device), torch.arange(hist, hist + lq, device=device)
    out = _dense_rows(rope, q, kn, vn, k, v, hpos, qpos, device, repeat)
    plain = Workspace(hist + lq, kv.heads, kv.head_dim, device)
    ahead = Workspace(hist + lq, kv.heads, kv.head_dim, device, read_ahead=True)
    every = [k.expand(kv.layers, *k.shape[1:]), v.expand(kv.layers, *v.shape[1:])]
    for fmt in ["bf16", *args.formats]:
        pool, pages = _pool(args, kv, frames, fmt, *every, device)
        plan = [pool.read_plan(pages)]
        br = BatchRead(pool, plain, rope, plan, [hpos], [qpos])
        _, read_ms = timed(lambda br=br: br.read(0), device, repeat)
        written = 2 * hist * kv.heads * kv.head_dim * 2
        out.append({"path": f"read-{fmt}", "ms": read_ms, "write_GBps": written / read_ms / 1e6})
        for name, ws in (("pool", plain), ("ahead", ahead)):
            # built once, as once per engine step (its page table upload is not per layer)
            b = BatchRead(pool, ws, rope, plan, [hpos], [qpos])

            def layers(b=b):
                for layer in range(kv.layers):
                    b.attend(layer, q, kn, vn)

            _, ms = timed(layers, device, repeat)
            out.append({"path": f"{name}-{fmt}", "ms": ms / kv.layers, "layers": kv.layers})
        del pool, br
    floor, sf = out[0]["ms"], out[1]["ms"]
    for r in out:
        r.update(vs_sdpa=r["ms"] / floor, vs_dense_sf=r["ms"] / sf, history_frames=frames)
        r.update(queries=lq, history_tokens=hist, device=str(device))
    return out


def _dense_rows(rope, q, kn, vn, k, v, hpos, qpos, device, repeat) -> list[dict]:
    """SDPA over the post-RoPE dense cache, and the Self-Forcing step that fills it."""
    hist, lq = k.shape[2], q.shape[0]
    cache = torch.empty(2, 1, hist + lq, *q.shape[1:], dtype=q.dtype, device=device)
    cache[0, 0, :hist] = rope.rotate(k[0].transpose(0, 1), hpos)  # cached after RoPE
    cache[1, 0, :hist] = v[0].transpose(0, 1)
    cr = ChunkRope(rope, qpos)
    rows = torch.arange(hist, hist + lq, device=device)
    qr = cr.qkv(q, kn, vn, cache[0, 0], cache[1, 0], rows)

    def sdpa(qq):
        kk, vv = cache[0].transpose(1, 2), cache[1].transpose(1, 2)
        return F.scaled_dot_product_attention(qq[None].transpose(1, 2), kk, vv)

    def dense_sf():  # RoPE on the chunk only, k and v into the cache: as the pool's step
        return sdpa(cr.qkv(q, kn, vn, cache[0, 0], cache[1, 0], rows))

    _, floor = timed(lambda: sdpa(qr), device, repeat)
    _, sf = timed(dense_sf, device, repeat)
    return [{"path": "sdpa-dense", "ms": floor}, {"path": "dense-sf", "ms": sf}]


def run(args: argparse.Namespace) -> int:
    device = torch.device(args.device)
    repeat = args.repeat or (20 if device.type == "cuda" else 2)
    rows = [r for f in args.history_frames for r in _rows_for(args, f, device, repeat)]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    for r in rows:
        extra = f"  {r['write_GBps']:7.0f} GB/s written" if "write_GBps" in r else ""
        print(
            f"  {r['history_frames']:3d} frames {r['path']:16s} {r['ms']:8.3f} ms  "
            f"{r['vs_sdpa']:5.2f}x sdpa  {r['vs_dense_sf']:5.2f}x dense-sf{extra}"
        )
    return 0
