"""Triton fused paged read: one launch per layer reads every page of a batch (bf16 and up to
two QVG formats mixed), dequantizes in registers, rotates keys (`AxialRope`) and writes
post-RoPE K and V straight into the varlen workspace. Contract and reference:
`kernels.paged_read_ref` (this file computes the same function).

Grid (pages * tiles per page, heads): one program = BLOCK_S tokens of one head of one page,
K then V (`ReadVariant.PER_HEAD`; `SHARED`, in `kernels.paged_read_shared`, loops over the
heads instead and builds each key tile's cos/sin once for all of them). The page's kind
picks the branch at run time (a scalar `if`), so a batch mixing bf16 sinks, INT4 and INT2
spans costs one launch. QVG tiles reuse the decode kernel's unpack, register Hadamard and
e4m3 scale decode by bit arithmetic (`decode_triton`; exact, the interpreter needs no fp8).

RoPE angles come from two-level float64-built tables (cos/sin of lo * w and of hi * 256 * w,
recombined in fp32): exact to fp32 rounding for coordinates < 262,144, no per-element
transcendental. Bytes per layer: each page slice read once (plus L1/L2-resident centroid rows
and tables), 2 * pages * T * H * D * 2 bytes written.
"""

from __future__ import annotations

import functools
from enum import StrEnum

import torch
import triton
import triton.language as tl

from .decode_triton import _e4m3, _fwht, _unpack
from .paged_read_ref import HI_ROWS, LO_ROWS, AxialRope, PagedBatch, PageFormat
from .paged_read_shared import _paged_read_shared_kernel, check_int32
from .spec import Method, ScaleDtype


class ReadVariant(StrEnum):
    """How the read splits its work (same results; tools/read_sweep.py times them)."""

    PER_HEAD = "per_head"
    """Grid (pages * tiles, H): one program = BLOCK_S tokens of one head, K then V (this file)."""
    SHARED = "shared"
    """Grid (pages * tiles, 2): BLOCK_S tokens of every head, K or V; one cos/sin tile per
    program for all heads (`kernels.paged_read_shared`)."""


BLOCK_S = 16  # per_head, H200 sweep 2026-12-01 (81 frames, int2): 16 1.15 ms, 32 1.35, 64 1.80
NUM_WARPS = 4
SHARED_LAUNCH = (8, 4)
"""(block_s, num_warps) of the shared variant: H200 sweep 2026-12-02 (tools/read_sweep.py, best
or within a few % of it at 7/21/81 frames for bf16 and QVG pages; BENCHMARKS.md)."""
VARIANT = ReadVariant.SHARED
"""H200, 2026-12-02: 1.13-1.26x the per_head speed at 7 frames, 1.9-2.25x at 21 and 81."""


@triton.jit
def _rope(y, p, c0, tab, axis_ptr, div0, div1, div2, mod0, mod1, mod2,
          R: tl.constexpr, W: tl.constexpr, HALF: tl.constexpr, NAX: tl.constexpr,
          ROWS: tl.constexpr, LO: tl.constexpr):  # fmt: skip
    """Rotate y [R, W] fp32 (row r: channels c0[r] .. c0[r] + W of the token at p[r])."""
    a, b = tl.split(tl.reshape(y, (R, W // 2, 2)))
    j = (c0 // 2)[:, None] + tl.arange(0, W // 2)[None, :]  # channel pair [R, W/2]
    jm = j < HALF
    ax = tl.load(axis_ptr + j, mask=jm, other=0)
    coord = ((p // div0) % mod0)[:, None] + tl.zeros_like(j).to(tl.int64)
    if NAX > 1:
        coord = tl.where(ax == 1, ((p // div1) % mod1)[:, None], coord)
    if NAX > 2:
        coord = tl.where(ax == 2, ((p // div2) % mod2)[:, None], coord)
    lo = (coord % LO).to(tl.int32)
    hi = tl.minimum(coord // LO, ROWS - 1).to(tl.int32)
    cl = tl.load(tab + lo * HALF + j, mask=jm, other=1.0)
    sl = tl.load(tab + (ROWS + lo) * HALF + j, mask=jm, other=0.0)
    ch = tl.load(tab + (2 * ROWS + hi) * HALF + j, mask=jm, other=1.0)
    sh = tl.load(tab + (3 * ROWS + hi) * HALF + j, mask=jm, other=0.0)
    cos = ch * cl - sh * sl
    sin = sh * cl + ch * sl
    return tl.reshape(tl.join(a * cos - b * sin, a * sin + b * cos), (R, W))


@triton.jit
def _qvg_half(u8, bf, f32, s16, b16, h, t0,
              T: tl.constexpr, H: tl.constexpr, D: tl.constexpr, BS: tl.constexpr,
              SC, ID, SOS4, C, BITS: tl.constexpr, G: tl.constexpr, LG: tl.constexpr,
              ST: tl.constexpr, ROT: tl.constexpr):  # fmt: skip
    """Decoded fp32 [BS * D/G, G] tile (row = token-group) of one (layer, kv) slice."""
    NG: tl.constexpr = D // G
    BM: tl.constexpr = BS * NG
    m = tl.arange(0, BM)
    t = t0 + m // NG
    g = m % NG
    ok = t < T
    n = (h * T + t) * NG + g  # token-group index inside the slice
    # slice bases in 16-byte units times a constant: the compiler sees 16-byte alignment
    q = _unpack(u8 + s16 * 16, n, ok, G, BITS).to(tl.float32)
    s = _e4m3(tl.load(u8 + s16 * 16 + SC + n, mask=ok, other=0).to(tl.int32))
    s = s * tl.load(f32 + b16 * 4 + SOS4 + h)
    lv = q - ((1 << BITS) - 1) / 2
    if ROT:
        y = _fwht(lv, BM, G, LG) * (s * (1.0 / tl.sqrt(G * 1.0)))[:, None]
    else:
        y = lv * s[:, None]
    offs_c = tl.arange(0, G)
    for st in tl.static_range(ST):
        idx = tl.load(u8 + s16 * 16 + ID + st * H * T + h * T + t, mask=ok, other=0)
        idx = idx.to(tl.int64)
        row = (st * H + h) * C + idx
        cen = tl.load(
            bf + b16 * 8 + row[:, None] * D + (g * G)[:, None] + offs_c[None, :],
            mask=ok[:, None],
            other=0.0,
        )
        y += cen.to(tl.float32)
    return y, t, g * G, ok


@triton.jit
def _store(ws, half_stride, half, dst, t, c0, ok, y, H: tl.constexpr, D: tl.constexpr,
           h, W: tl.constexpr):  # fmt: skip
    c = c0[:, None] + tl.arange(0, W)[None, :]
    off = half * half_stride + ((dst + t).to(tl.int64) * H + h)[:, None] * D + c
    tl.store(ws + off, y.to(ws.dtype.element_ty), mask=ok[:, None] & (c < D))


@triton.jit
def _paged_read_kernel(
    u8, bf, f32, ws, half_stride,
    src_ptr, book_ptr, kind_ptr, dst_ptr, pos_ptr,
    tab, axis_ptr, div0, div1, div2, mod0, mod1, mod2,
    layer, n_tiles, SB0, SBA, BSBA, SCA, IDA, SOSA, CA, SBB, BSBB, SCB, IDB, SOSB, CB,  # 16 B units
    T: tl.constexpr, H: tl.constexpr, D: tl.constexpr, DP: tl.constexpr, BS: tl.constexpr,
    ROPE: tl.constexpr, NAX: tl.constexpr, ROWS: tl.constexpr, LO: tl.constexpr,
    NQ: tl.constexpr, A_BITS: tl.constexpr, A_G: tl.constexpr, A_LG: tl.constexpr,
    A_ST: tl.constexpr, A_ROT: tl.constexpr, B_BITS: tl.constexpr, B_G: tl.constexpr,
    B_LG: tl.constexpr, B_ST: tl.constexpr, B_ROT: tl.constexpr,
):  # fmt: skip
    page = tl.program_id(0) // n_tiles
    t0 = (tl.program_id(0) % n_tiles) * BS
    h = tl.program_id(1)
    kind = tl.load(kind_ptr + page)
    src = tl.load(src_ptr + page) // 16  # 16-byte units (every slice is 16-byte aligned)
    book = tl.load(book_ptr + page) // 16
    dst = tl.load(dst_ptr + page)
    pos = tl.load(pos_ptr + page)
    for half in tl.static_range(2):
        if kind == 0:  # bf16 page: values [H, T, D]
            t = t0 + tl.arange(0, BS)
            ok = t < T
            c = tl.arange(0, DP)
            base = (src + (2 * layer + half) * SB0) * 8
            off = base + (h * T + t).to(tl.int64)[:, None] * D + c[None, :]
            y = tl.load(bf + off, mask=ok[:, None] & (c[None, :] < D), other=0.0)
            y = y.to(tl.float32)
            c0 = tl.zeros_like(t)
            if half == 0 and ROPE:
                y = _rope(y, pos + t, c0, tab, axis_ptr, div0, div1, div2, mod0, mod1, mod2,
                          BS, DP, D // 2, NAX, ROWS, LO)  # fmt: skip
            _store(ws, half_stride, half, dst, t, c0, ok, y, H, D, h, DP)
        elif NQ == 1:
            _qvg_page(u8, bf, f32, ws, half_stride, half, src, book, dst, pos, h, t0, layer,
                      tab, axis_ptr, div0, div1, div2, mod0, mod1, mod2,
                      SBA, BSBA, SCA, IDA, SOSA, CA, T, H, D, BS, ROPE, NAX, ROWS, LO,
                      A_BITS, A_G, A_LG, A_ST, A_ROT)  # fmt: skip
        elif NQ == 2:
            if kind == 1:
                _qvg_page(u8, bf, f32, ws, half_stride, half, src, book, dst, pos, h, t0,
                          layer, tab, axis_ptr, div0, div1, div2, mod0, mod1, mod2,
                          SBA, BSBA, SCA, IDA, SOSA, CA, T, H, D, BS, ROPE, NAX, ROWS, LO,
                          A_BITS, A_G, A_LG, A_ST, A_ROT)  # fmt: skip
            else:
                _qvg_page(u8, bf, f32, ws, half_stride, half, src, book, dst, pos, h, t0,
                          layer, tab, axis_ptr, div0, div1, div2, mod0, mod1, mod2,
                          SBB, BSBB, SCB, IDB, SOSB, CB, T, H, D, BS, ROPE, NAX, ROWS, LO,
                          B_BITS, B_G, B_LG, B_ST, B_ROT)  # fmt: skip


@triton.jit
def _qvg_page(u8, bf, f32, ws, half_stride, half: tl.constexpr, src, book, dst, pos, h, t0,
              layer, tab, axis_ptr, div0, div1, div2, mod0, mod1, mod2,
              SB, BSB, SC, ID, SOS4, C, T: tl.constexpr, H: tl.constexpr, D: tl.constexpr,
              BS: tl.constexpr, ROPE: tl.constexpr, NAX: tl.constexpr, ROWS: tl.constexpr,
              LO: tl.constexpr, BITS: tl.constexpr, G: tl.constexpr, LG: tl.constexpr,
              ST: tl.constexpr, ROT: tl.constexpr):  # fmt: skip
    """One (layer, half) tile of a QVG page: decode, rotate keys, store."""
    s = src + (2 * layer + half) * SB
    b = book + (2 * layer + half) * BSB
    y, t, c0, ok = _qvg_half(u8, bf, f32, s, b, h, t0, T, H, D, BS, SC, ID, SOS4, C,
                             BITS, G, LG, ST, ROT)  # fmt: skip
    if half == 0 and ROPE:
        y = _rope(y, pos + t, c0, tab, axis_ptr, div0, div1, div2, mod0, mod1, mod2,
                  BS * (D // G), G, D // 2, NAX, ROWS, LO)  # fmt: skip
    _store(ws, half_stride, half, dst, t, c0, ok, y, H, D, h, G)


@functools.lru_cache(maxsize=16)
def _rope_args(rope: AxialRope | None, head_dim: int, device: str):
    if rope is None:
        rope = AxialRope.one_d(head_dim)  # unused tables (ROPE=False), valid pointers
    if rope.head_dim != head_dim:
        raise ValueError(f"rope covers head_dim {rope.head_dim}, the pages hold {head_dim}")
    pad = (*rope.div, 1, 1)[:3], (*rope.mod, 1, 1)[:3]
    axis = torch.tensor(rope.axis, dtype=torch.int32, device=device)
    return rope.tables(device), axis, pad, len(rope.div)


def _qvg_args(fmt: PageFormat) -> tuple[tuple, dict]:
    """Runtime ints (slice bytes, book slice bytes, scales/ids/sos offsets, centroids) and
    constexprs of one QVG slot; ValueError for layouts the kernel does not read."""
    spec, qs, ks = fmt.spec, fmt.spec.quant, fmt.spec.kmeans
    if spec.method is not Method.QVG or qs is None or ks is None or fmt.book_fields is None:
        raise ValueError(f"paged read: {spec.name} is not a QVG page format")
    if not qs.symmetric or qs.scale_dtype is not ScaleDtype.FP8 or ks.centroids > 256:
        raise ValueError(
            f"paged read: {spec.name} needs symmetric fp8 scales and <= 256 centroids "
            "(use the reference backend for other QVG variants)"
        )
    f, bk = fmt.fields, fmt.book_fields
    if f["codes"][0] != 0 or bk["centroids.0"][0] != 0:
        raise ValueError(f"paged read: {spec.name} slices must start with codes / centroids")
    if fmt.slice_bytes % 16 or fmt.book_slice_bytes % 16 or bk["scale_of_scales"][0] % 4:
        raise ValueError(f"paged read: {spec.name} slices must be 16-byte aligned")
    ints = (fmt.slice_bytes // 16, fmt.book_slice_bytes // 16, f["scales"][0], f["ids.0"][0])
    ints += (bk["scale_of_scales"][0] // 4, ks.centroids)
    g = qs.group_size
    const = dict(BITS=qs.bits, G=g, LG=g.bit_length() - 1, ST=ks.stages, ROT=qs.rotate)
    return ints, const


def paged_read(
    arena: torch.Tensor,
    formats: list[PageFormat],
    batch: PagedBatch,
    layer: int,
    ws: torch.Tensor,
    rope: AxialRope | None,
    block_s: int | None = None,
    num_warps: int | None = None,
    variant: ReadVariant | str | None = None,
) -> torch.Tensor:
    """Same contract as `paged_read_ref.paged_read_ref`: formats[0] must be bf16, formats[1:]
    at most two QVG formats; arena flat uint8 (16-byte aligned slices); ws [2, rows, H, D]
    (bf16 or fp32, each half contiguous). `variant` (default VARIANT), `block_s` (a power of
    two) and `num_warps` change the speed, not the result. Returns ws."""
    if formats[0].spec.method is not Method.BF16 or not 1 <= len(formats) <= 3:
        raise ValueError("paged read: formats = [bf16, up to two QVG formats]")
    h, d = ws.shape[2:]
    t = formats[0].fields["values"][2][1]
    if ws[0].stride() != (h * d, d, 1) or formats[0].fields["values"][2] != (h, t, d):
        raise ValueError(f"paged read: ws must be [2, rows, {h}, {d}], each half contiguous")
    pages = batch.src.numel()
    if pages == 0:
        return ws
    variant = ReadVariant(variant or VARIANT)
    bs0, nw0 = SHARED_LAUNCH if variant is ReadVariant.SHARED else (BLOCK_S, NUM_WARPS)
    block_s, num_warps = block_s or bs0, num_warps or nw0
    if block_s < 1 or block_s & (block_s - 1):
        raise ValueError(f"paged read: block_s = {block_s}, use a power of two")
    if variant is ReadVariant.SHARED:
        check_int32(t, block_s, h, d)
    unused = ((0,) * 6, dict(BITS=2, G=16, LG=4, ST=1, ROT=False))  # compiled out (NQ)
    qa = _qvg_args(formats[1]) if len(formats) > 1 else unused
    qb = _qvg_args(formats[2]) if len(formats) > 2 else unused
    tab, axis, (div, mod), nax = _rope_args(rope, d, str(arena.device))
    n_tiles = triton.cdiv(t, block_s)
    shared = variant is ReadVariant.SHARED
    kernel = _paged_read_shared_kernel if shared else _paged_read_kernel
    kernel[(pages * n_tiles, 2 if shared else h)](
        arena, arena.view(torch.bfloat16), arena.view(torch.float32), ws, ws.stride(0),
        *batch, tab, axis, *div, *mod, layer, n_tiles, formats[0].slice_bytes // 16, *qa[0], *qb[0],
        T=t, H=h, D=d, DP=triton.next_power_of_2(d), BS=block_s, ROPE=rope is not None,
        NAX=nax, ROWS=HI_ROWS, LO=LO_ROWS,
        **{f"A_{k}": v for k, v in qa[1].items()},
        NQ=len(formats) - 1, **{f"B_{k}": v for k, v in qb[1].items()},
        num_warps=num_warps,
    )  # fmt: skip
    return ws


@triton.jit
def _rope_rows_kernel(x, pos_ptr, out, rows_ptr, N, tab, axis_ptr,
                      div0, div1, div2, mod0, mod1, mod2,
                      H: tl.constexpr, D: tl.constexpr, DP: tl.constexpr, BS: tl.constexpr,
                      NAX: tl.constexpr, ROWS: tl.constexpr, LO: tl.constexpr):  # fmt: skip
    n = tl.program_id(0) * BS + tl.arange(0, BS)
    h = tl.program_id(1)
    ok = n < N
    c = tl.arange(0, DP)
    m = ok[:, None] & (c[None, :] < D)
    y = tl.load(x + (n.to(tl.int64) * H + h)[:, None] * D + c[None, :], mask=m, other=0.0)
    p = tl.load(pos_ptr + n, mask=ok, other=0)
    y = _rope(y.to(tl.float32), p, tl.zeros_like(n), tab, axis_ptr,
              div0, div1, div2, mod0, mod1, mod2, BS, DP, D // 2, NAX, ROWS, LO)  # fmt: skip
    r = tl.load(rows_ptr + n, mask=ok, other=0)
    tl.store(out + (r * H + h)[:, None] * D + c[None, :], y.to(out.dtype.element_ty), mask=m)


def rope_rows(
    x: torch.Tensor,
    pos: torch.Tensor,
    rope: AxialRope,
    out: torch.Tensor | None = None,
    rows: torch.Tensor | None = None,
    block_s: int = 16,
) -> torch.Tensor:
    """x [N, H, D] rotated at pos int64 [N] (reference: `AxialRope.rotate`), written to rows
    `rows` int64 [N] of out [M, H, D] (default: a new [N, H, D], rows 0..N-1). One pass:
    reads N*H*D*x.itemsize bytes, writes N*H*D*out.itemsize."""
    n, h, d = x.shape
    x = x.contiguous()
    if out is None:
        out = torch.empty_like(x)
    if rows is None:
        rows = torch.arange(n, device=x.device)
    if out.shape[1:] != x.shape[1:] or not out.is_contiguous():
        raise ValueError(f"rope_rows: out must be a contiguous [M, {h}, {d}] tensor")
    if n == 0:
        return out
    tab, axis, (div, mod), nax = _rope_args(rope, d, str(x.device))
    grid = (triton.cdiv(n, block_s), h)
    _rope_rows_kernel[grid](
        x, pos, out, rows, n, tab, axis, *div, *mod,
        H=h, D=d, DP=triton.next_power_of_2(d), BS=block_s, NAX=nax, ROWS=HI_ROWS, LO=LO_ROWS,
    )  # fmt: skip
    return out
