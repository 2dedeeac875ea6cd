"""The fused paged read, shared-angle variant (`paged_read(..., variant="shared")`).

Same arguments, same function and the same fp32 arithmetic as the per-head kernel in
`kernels.paged_read_triton` (contract and reference: `kernels.paged_read_ref`); only the work
per program differs:

    per_head  grid (pages * tiles, H):  one program = BS tokens x 1 head,  K then V
    shared    grid (pages * tiles, 2):  one program = BS tokens x H heads, K or V (axis 1)

A key tile's cos/sin ([BS, D/2] pairs for bf16 pages; [BS * D/G, G/2] for QVG pages, whose
[BS * D/G, G] tiles are [BS, D] row-major) depends only on the token positions and the channel
pairs, so it is built once per program and reused by all H heads, as are the page-table
scalars, the axis coordinates (int64 once per row, then int32 table rows) and the tile's
offsets. Offsets inside a page are int32: the launcher requires (T + BS) * H * D < 2^31.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .decode_triton import _e4m3, _fwht, _unpack

INT32_LIMIT = 1 << 31


@triton.jit
def _lo_hi(coord, LO: tl.constexpr, ROWS: tl.constexpr):
    """int32 [R, 1] low / high table rows of axis coordinates [R] (int64)."""
    lo = (coord % LO).to(tl.int32)
    hi = tl.minimum(coord // LO, ROWS - 1).to(tl.int32)
    return lo[:, None], hi[:, None]


@triton.jit
def _cos_sin(p, c0, tab, axis_ptr, div0, div1, div2, mod0, mod1, mod2,
             W: tl.constexpr, HALF: tl.constexpr, NAX: tl.constexpr, ROWS: tl.constexpr,
             LO: tl.constexpr):  # fmt: skip
    """fp32 cos, sin [R, W/2] for row r = channels c0[r] .. c0[r] + W of the token at p[r]
    (int64 [R]); the per-head `_rope` computes the same table rows per element."""
    j = (c0 // 2)[:, None] + tl.arange(0, W // 2)[None, :]  # channel pair [R, W/2]
    jm = j < HALF
    lo, hi = _lo_hi((p // div0) % mod0, LO, ROWS)
    if NAX > 1:
        ax = tl.load(axis_ptr + j, mask=jm, other=0)
        lo1, hi1 = _lo_hi((p // div1) % mod1, LO, ROWS)
        lo, hi = tl.where(ax == 1, lo1, lo), tl.where(ax == 1, hi1, hi)
        if NAX > 2:
            lo2, hi2 = _lo_hi((p // div2) % mod2, LO, ROWS)
            lo, hi = tl.where(ax == 2, lo2, lo), tl.where(ax == 2, hi2, hi)
    cl = tl.load(tab + lo * HALF + j, mask=jm, other=1.0)
    sl = tl.load(tab + (ROWS + lo) * HALF + j, mask=jm, other=0.0)
    ch = tl.load(tab + (2 * ROWS + hi) * HALF + j, mask=jm, other=1.0)
    sh = tl.load(tab + (3 * ROWS + hi) * HALF + j, mask=jm, other=0.0)
    return ch * cl - sh * sl, sh * cl + ch * sl


@triton.jit
def _rotate(y, cos, sin, R: tl.constexpr, W: tl.constexpr):
    """y [R, W] fp32 with each channel pair turned by (cos, sin) [R, W/2]."""
    a, b = tl.split(tl.reshape(y, (R, W // 2, 2)))
    return tl.reshape(tl.join(a * cos - b * sin, a * sin + b * cos), (R, W))


@triton.jit
def _bf16_heads(bf, out, s16, pos, t0, tab, axis_ptr, div0, div1, div2, mod0, mod1, mod2,
                T: tl.constexpr, H: tl.constexpr, D: tl.constexpr, DP: tl.constexpr,
                BS: tl.constexpr, ROT: tl.constexpr, NAX: tl.constexpr, ROWS: tl.constexpr,
                LO: tl.constexpr):  # fmt: skip
    """Rows t0 .. t0 + BS of every head of one bf16 slice [H, T, D] (slice at s16 16-byte
    units) into out (this page's first workspace row of this half, rows of H * D)."""
    t = t0 + tl.arange(0, BS)
    c = tl.arange(0, DP)
    m = (t < T)[:, None] & (c < D)[None, :]
    src = bf + s16 * 8 + t[:, None] * D + c[None, :]
    dst = out + t[:, None] * (H * D) + c[None, :]
    if ROT:
        cos, sin = _cos_sin(pos + t, tl.zeros_like(t), tab, axis_ptr, div0, div1, div2,
                            mod0, mod1, mod2, DP, D // 2, NAX, ROWS, LO)  # fmt: skip
    for h in range(H):
        y = tl.load(src + h * (T * D), mask=m, other=0.0)
        if ROT:
            y = _rotate(y.to(tl.float32), cos, sin, BS, DP)
        tl.store(dst + h * D, y.to(out.dtype.element_ty), mask=m)


@triton.jit
def _qvg_heads(u8, bf, f32, out, s16, b16, pos, t0, tab, axis_ptr,
               div0, div1, div2, mod0, mod1, mod2, SC, ID, SOS4, C,
               T: tl.constexpr, H: tl.constexpr, D: tl.constexpr, BS: tl.constexpr,
               ROT: tl.constexpr, NAX: tl.constexpr, ROWS: tl.constexpr, LO: tl.constexpr,
               BITS: tl.constexpr, G: tl.constexpr, LG: tl.constexpr, ST: tl.constexpr,
               FWHT: tl.constexpr):  # fmt: skip
    """Rows t0 .. t0 + BS of every head of one QVG (layer, half) slice (at s16, its codebook
    slice at b16, 16-byte units): decode each head's [BS * D/G, G] tile (row = token-group)
    as `paged_read_triton._qvg_half` does, rotate keys (ROT), store."""
    NG: tl.constexpr = D // G
    BM: tl.constexpr = BS * NG
    r = tl.arange(0, BM)
    t = t0 + r // NG
    g = r % NG
    ok = t < T
    nl = t0 * NG + r  # token-group inside one head's block (= t * NG + g)
    sl = u8 + s16 * 16
    col = (g * G)[:, None] + tl.arange(0, G)[None, :]  # channel [BM, G]
    dst = out + t[:, None] * (H * D) + col
    if ROT:
        cos, sin = _cos_sin(pos + t, g * G, tab, axis_ptr, div0, div1, div2,
                            mod0, mod1, mod2, G, D // 2, NAX, ROWS, LO)  # fmt: skip
    for h in range(H):
        n = h * (T * NG) + nl
        q = _unpack(sl, n, ok, G, BITS).to(tl.float32)
        s = _e4m3(tl.load(sl + SC + n, mask=ok, other=0).to(tl.int32))
        s = s * tl.load(f32 + b16 * 4 + SOS4 + h)
        lv = q - ((1 << BITS) - 1) / 2
        if FWHT:
            y = _fwht(lv, BM, G, LG) * (s * (1.0 / tl.sqrt(G * 1.0)))[:, None]
        else:
            y = lv * s[:, None]
        for st in tl.static_range(ST):
            idx = tl.load(sl + ID + (st * H + h) * T + t, mask=ok, other=0).to(tl.int32)
            rows = bf + b16 * 8 + ((st * H + h) * C).to(tl.int64) * D  # this head's book
            cen = tl.load(rows + idx[:, None] * D + col, mask=ok[:, None], other=0.0)
            y += cen.to(tl.float32)
        if ROT:
            y = _rotate(y, cos, sin, BM, G)
        tl.store(dst + h * D, y.to(out.dtype.element_ty), mask=ok[:, None])


@triton.jit
def _page_half(u8, bf, f32, out, kind, src, book, pos, t0, layer,
               tab, axis_ptr, div0, div1, div2, mod0, mod1, mod2,
               SB0, SBA, BSBA, SCA, IDA, SOSA, CA, SBB, BSBB, SCB, IDB, SOSB, CB,
               T: tl.constexpr, H: tl.constexpr, D: tl.constexpr, DP: tl.constexpr,
               BS: tl.constexpr, HALF: tl.constexpr, ROT: tl.constexpr, NAX: tl.constexpr,
               ROWS: tl.constexpr, LO: tl.constexpr, NQ: tl.constexpr,
               A_BITS: tl.constexpr, A_G: tl.constexpr, A_LG: tl.constexpr, A_ST: tl.constexpr,
               A_ROT: tl.constexpr, B_BITS: tl.constexpr, B_G: tl.constexpr,
               B_LG: tl.constexpr, B_ST: tl.constexpr, B_ROT: tl.constexpr):  # fmt: skip
    """One half (HALF 0 = K, 1 = V) of one tile of a page of any kind (a run-time branch)."""
    sl = 2 * layer + HALF
    if kind == 0:
        _bf16_heads(bf, out, src + sl * SB0, pos, t0, tab, axis_ptr, div0, div1, div2,
                    mod0, mod1, mod2, T, H, D, DP, BS, ROT, NAX, ROWS, LO)  # fmt: skip
    elif NQ == 1:
        _qvg_heads(u8, bf, f32, out, src + sl * SBA, book + sl * BSBA, pos, t0, tab, axis_ptr,
                   div0, div1, div2, mod0, mod1, mod2, SCA, IDA, SOSA, CA, T, H, D, BS, ROT,
                   NAX, ROWS, LO, A_BITS, A_G, A_LG, A_ST, A_ROT)  # fmt: skip
    elif NQ == 2:
        if kind == 1:
            _qvg_heads(u8, bf, f32, out, src + sl * SBA, book + sl * BSBA, pos, t0, tab,
                       axis_ptr, div0, div1, div2, mod0, mod1, mod2, SCA, IDA, SOSA, CA,
                       T, H, D, BS, ROT, NAX, ROWS, LO, A_BITS, A_G, A_LG, A_ST, A_ROT)  # fmt: skip
        else:
            _qvg_heads(u8, bf, f32, out, src + sl * SBB, book + sl * BSBB, pos, t0, tab,
                       axis_ptr, div0, div1, div2, mod0, mod1, mod2, SCB, IDB, SOSB, CB,
                       T, H, D, BS, ROT, NAX, ROWS, LO, B_BITS, B_G, B_LG, B_ST, B_ROT)  # fmt: skip


@triton.jit
def _paged_read_shared_kernel(
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
    half = tl.program_id(1)
    kind = tl.load(kind_ptr + page)
    src = tl.load(src_ptr + page) // 16  # 16-byte units (every slice is 16-byte aligned)
    book = tl.load(book_ptr + page) // 16
    out = ws + half * half_stride + tl.load(dst_ptr + page) * (H * D)
    pos = tl.load(pos_ptr + page)
    if half == 0:
        _page_half(u8, bf, f32, out, kind, src, book, pos, t0, layer, tab, axis_ptr,
                   div0, div1, div2, mod0, mod1, mod2, SB0, SBA, BSBA, SCA, IDA, SOSA, CA,
                   SBB, BSBB, SCB, IDB, SOSB, CB, T, H, D, DP, BS, 0, ROPE, NAX, ROWS, LO, NQ,
                   A_BITS, A_G, A_LG, A_ST, A_ROT, B_BITS, B_G, B_LG, B_ST, B_ROT)  # fmt: skip
    else:
        _page_half(u8, bf, f32, out, kind, src, book, pos, t0, layer, tab, axis_ptr,
                   div0, div1, div2, mod0, mod1, mod2, SB0, SBA, BSBA, SCA, IDA, SOSA, CA,
                   SBB, BSBB, SCB, IDB, SOSB, CB, T, H, D, DP, BS, 1, False, NAX, ROWS, LO, NQ,
                   A_BITS, A_G, A_LG, A_ST, A_ROT, B_BITS, B_G, B_LG, B_ST, B_ROT)  # fmt: skip


def check_int32(tokens: int, block_s: int, heads: int, head_dim: int) -> None:
    """ValueError when a page's offsets would overflow the variant's int32 arithmetic."""
    if (tokens + block_s) * heads * head_dim >= INT32_LIMIT:
        raise ValueError(
            f"paged read (shared): (page tokens {tokens} + block_s {block_s}) * {heads} heads"
            f" * {head_dim} must stay below 2^31 (int32 offsets); use variant='per_head'"
        )
