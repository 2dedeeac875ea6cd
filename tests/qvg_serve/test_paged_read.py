"""The fused paged read (Triton, through the interpreter on CPU), both variants (`per_head`,
`shared`), equals its torch reference (decode + RoPE + gather) on mixed formats, ragged
batches, sinks, dropped middles, permuted page tables and odd token counts; the variants agree
bit for bit; and the RoPE it applies is the model's."""

from __future__ import annotations

import functools
import random

import pytest
import torch
from conftest import tol

from kernels.paged_read_ref import AxialRope, PagedBatch, PageFormat, paged_read_ref
from kernels.paged_read_triton import ReadVariant, paged_read
from kernels.spec import get_spec
from qvg_serve.engine import kv_format as kf
from qvg_serve.engine.kv_pool import KVPool, pool_layout
from qvg_serve.engine.paged_attention import paged_batch
from qvg_serve.models.wan_blocks import WanRope
from scheduler.pages import PageAllocator

FORMATS = ("bf16", "qvg-int4", "qvg-int2")
VARIANTS = [v.value for v in ReadVariant]
variants = pytest.mark.parametrize("variant", VARIANTS)


def _pool(kv: kf.KVShape, pages: int, formats=FORMATS, device="cpu"):
    specs = {f: get_spec(f).with_kmeans(centroids=8, iters=1) for f in formats if f != "bf16"}
    layout = pool_layout(kv, formats, pages * kf.page_bytes("bf16", kv), 0, specs)
    alloc = PageAllocator(layout)
    return KVPool(kv, alloc, device, specs), alloc


def _stream(pool, alloc, sid, n, spans, rng):
    """n pages of random K/V at shuffled slots; spans: [(first, last, fmt)] encoded."""
    kv = pool.kv
    pages = []
    for _ in range(n):
        alloc.allocate(1000 * sid + len(pages), "bf16", rng.randint(0, 2))  # fillers between
        pages += alloc.allocate(sid, "bf16", 1)
    shape = (kv.layers, kv.heads, n * kv.page_tokens, kv.head_dim)
    k, v = (torch.randn(shape).bfloat16().to(pool.device) for _ in range(2))
    pool.write_pages(pages, k, v)
    for a, b, fmt in spans:
        plan = alloc.begin_encode(sid, pages[a:b], fmt)
        pool.execute(plan)
        alloc.commit(plan)
    return pages


def _batch(pool, tables, frames):
    t = pool.kv.page_tokens
    plans = [pool.read_plan(tb) for tb in tables]
    hpos = [
        (torch.tensor(f, dtype=torch.int64)[:, None] * t + torch.arange(t)).reshape(-1)
        for f in frames
    ]
    lens = [p.tokens + 5 for p in plans]  # 5 chunk rows after each history (left unwritten)
    bases = [sum(lens[:i]) for i in range(len(lens))]
    batch, formats = paged_batch(pool, plans, hpos, bases)
    return batch, formats, bases, plans, sum(lens)


def _compare(pool, tables, frames, rope, variant, layers=None, block_s=None, dtype=torch.bfloat16):
    """Checks every layer's read against the reference; returns the kernel's workspaces."""
    batch, formats, bases, plans, rows = _batch(pool, tables, frames)
    kv = pool.kv
    read = functools.partial(paged_read, block_s=block_s, variant=variant)
    results = []
    for layer in layers or range(kv.layers):
        outs = []
        for fn in (paged_read_ref, read):
            ws = torch.full((2, rows + 3, kv.heads, kv.head_dim), float("nan"), device=pool.device)
            outs.append(fn(pool.arena["gpu"], formats, batch, layer, ws.to(dtype), rope))
        want, got = outs
        results.append(got)
        written = torch.zeros(rows + 3, dtype=torch.bool, device=pool.device)
        for b, p in zip(bases, plans, strict=True):
            written[b : b + p.tokens] = True
        assert torch.isnan(got[:, ~written].float()).all(), "rows outside the pages were written"
        assert torch.isfinite(got[:, written].float()).all(), "a page row was left unwritten"
        torch.testing.assert_close(got[:, written], want[:, written], **tol("bf16"))
    return results


@variants
def test_mixed_formats_ragged_batch_dropped_middles_odd_tokens(variant):
    rng = random.Random(0)
    kv = kf.KVShape(layers=2, heads=3, head_dim=64, page_tokens=13)
    pool, alloc = _pool(kv, 70)
    a = _stream(pool, alloc, 1, 7, [(2, 4, "qvg-int4"), (4, 7, "qvg-int2")], rng)
    b = _stream(pool, alloc, 2, 1, [], rng)
    c = _stream(pool, alloc, 3, 5, [(1, 5, "qvg-int2")], rng)
    # a: sink (2 bf16 pages) + a dropped middle (frames 2-9 gone) + int4 and int2 pages
    tables = [a, b, c[:1] + c[3:]]
    frames = [[0, 1, 10, 11, 12, 13, 14], [0], [0, 40, 41]]
    rope = AxialRope.one_d(kv.head_dim)
    _compare(pool, tables, frames, rope, variant)
    _compare(pool, tables, frames, None, variant, layers=[1])


@variants
def test_single_qvg_format_and_empty_history(variant):
    rng = random.Random(1)
    kv = kf.KVShape(layers=1, heads=2, head_dim=128, page_tokens=9)
    pool, alloc = _pool(kv, 30, ("bf16", "qvg-int2"))
    a = _stream(pool, alloc, 1, 4, [(1, 4, "qvg-int2")], rng)
    rope = WanRope(128, (3, 3)).axial()
    _compare(pool, [a, []], [[5, 6, 7, 8], []], rope, variant)


@variants
def test_bf16_pages_with_wan_rope_at_non_power_of_two_head_dim(variant):
    rng = random.Random(2)
    kv = kf.KVShape(layers=2, heads=2, head_dim=24, page_tokens=35)  # tiny-test: 5 x 7 grid
    pool, alloc = _pool(kv, 12, ("bf16",))
    a = _stream(pool, alloc, 1, 3, [], rng)
    b = _stream(pool, alloc, 2, 2, [], rng)
    rope = WanRope(24, (5, 7)).axial()
    _compare(pool, [a, b], [[0, 1, 2], [3, 9]], rope, variant)


def test_axial_rope_is_wan_rope_and_tables_are_exact():
    rope = WanRope(128, (30, 52))
    ax = rope.axial()
    x = torch.randn(300, 2, 128)
    pos = torch.randint(0, 200 * 1560, (300,))
    torch.testing.assert_close(ax.rotate(x, pos), rope(x, pos), atol=0, rtol=0)
    tab = ax.tables("cpu").double()
    c = torch.tensor([0, 1, 255, 256, 1000, 65537, 262143])
    lo, hi = c % 256, c // 256
    cos = tab[2, hi] * tab[0, lo] - tab[3, hi] * tab[1, lo]
    want = (c[:, None].double() * torch.tensor(ax.inv_freq, dtype=torch.float64)).cos()
    torch.testing.assert_close(cos, want, atol=2e-6, rtol=0)


@variants
def test_unsupported_qvg_variant_is_refused(variant):
    kv = kf.KVShape(layers=1, heads=1, head_dim=64, page_tokens=4)
    pool, alloc = _pool(kv, 10, ("bf16", "qvg-int2"))
    a = _stream(pool, alloc, 1, 2, [], random.Random(3))
    batch, formats, *_ = _batch(pool, [a], [[0, 1]])
    formats.append(formats[0])  # bf16 in a QVG slot
    with pytest.raises(ValueError, match="not a QVG page format"):
        ws = torch.empty(2, 8, 1, 64).bfloat16()
        paged_read(pool.arena["gpu"], formats, batch, 0, ws, None, variant=variant)


@pytest.mark.parametrize(
    ("heads", "block_s", "dtype"),
    [(1, 8, torch.bfloat16), (5, 16, torch.bfloat16), (5, 8, torch.float32)],
)
def test_variants_agree_bit_for_bit_on_any_head_count_and_partial_tiles(heads, block_s, dtype):
    """The shared variant loops over the heads inside a program and builds the cos/sin tile
    once: one head, an odd count, T = 21 (tiles of 8 / 16, the last one partial), both QVG
    kinds and bf16 pages in one batch, Wan's 3-axis RoPE, bf16 and fp32 workspaces."""
    rng = random.Random(5)
    kv = kf.KVShape(layers=2, heads=heads, head_dim=128, page_tokens=21)  # 3 x 7 grid
    pool, alloc = _pool(kv, 40)
    a = _stream(pool, alloc, 1, 6, [(1, 3, "qvg-int2"), (3, 6, "qvg-int4")], rng)
    b = _stream(pool, alloc, 2, 3, [(1, 3, "qvg-int4")], rng)
    tables, frames = [a[:1] + a[2:], b], [[0, 7, 8, 9, 10], [2, 3, 4]]
    rope = WanRope(128, (3, 7)).axial()
    got = {
        v: _compare(pool, tables, frames, rope, v, block_s=block_s, dtype=dtype) for v in VARIANTS
    }
    for per_head, shared in zip(got["per_head"], got["shared"], strict=True):
        assert torch.equal(per_head.nan_to_num(7.0), shared.nan_to_num(7.0))


def test_shared_variant_refuses_pages_past_int32_offsets():
    kv = kf.KVShape(layers=1, heads=1, head_dim=64, page_tokens=4)
    pool, alloc = _pool(kv, 10, ("bf16",))
    a = _stream(pool, alloc, 1, 2, [], random.Random(6))
    batch, formats, *_ = _batch(pool, [a], [[0, 1]])
    big = (128, 1 << 17, 128)  # (T + block_s) * H * D >= 2^31: claimed, never allocated
    spec = formats[0].spec
    fmts = [PageFormat(spec, 2 * 128 * big[1] * 128, {"values": (0, torch.bfloat16, big)})]
    ws = torch.empty(2, 8, 128, 128).bfloat16()
    one = PagedBatch(*(x[:1] for x in batch))
    with pytest.raises(ValueError, match="2\\^31"):
        paged_read(pool.arena["gpu"], fmts, one, 0, ws, None, variant="shared")
    with pytest.raises(ValueError, match="power of two"):
        paged_read(pool.arena["gpu"], formats, batch, 0, torch.empty(2, 8, 1, 64), None, block_s=12)


@pytest.mark.gpu
@variants
def test_full_shapes_on_gpu(variant):
    rng = random.Random(4)
    kv = kf.KVShape(layers=2, heads=12, head_dim=128, page_tokens=1560)
    pool, alloc = _pool(kv, 40, device="cuda")
    a = _stream(pool, alloc, 1, 12, [(3, 6, "qvg-int4"), (6, 12, "qvg-int2")], rng)
    b = _stream(pool, alloc, 2, 5, [(3, 5, "qvg-int2")], rng)
    rope = WanRope(128, (30, 52)).axial()
    _compare(pool, [a, b[:3] + b[4:]], [list(range(12)), [0, 1, 2, 30]], rope, variant)


def test_rope_rows_kernel_equals_axial_rope_into_scattered_rows():
    from kernels.paged_read_triton import rope_rows

    rope = WanRope(24, (5, 7)).axial()
    x = torch.randn(37, 3, 24).bfloat16()
    pos = torch.randint(0, 35 * 400, (37,))
    rows = torch.randperm(50)[:37]
    out = torch.full((50, 3, 24), float("nan")).bfloat16()
    rope_rows(x, pos, rope, out, rows)
    torch.testing.assert_close(out[rows], rope.rotate(x.float(), pos).bfloat16(), **tol("bf16"))
    rest = torch.ones(50, dtype=torch.bool)
    rest[rows] = False
    assert torch.isnan(out[rest].float()).all()
