"""Triton fused QVG residual encode: subtract centroids + rotate + choose scale + quantize + pack.

Per (row, block of BLOCK_S tokens), for each group of G channels (static loop over D/G):

    r = x - c_0[id_0] - ... - c_{T-1}[id_{T-1}]     fp32, same order as qvg_ref (bit-identical)
    y = r @ H_G                                       if rotate (fp32 ieee tl.dot)
    scale: symmetric -> least-error candidate among alpha * absmax/((L-1)/2), alpha from
           groupquant_ref.search_alphas (loaded, so the candidates are the reference's), all
           or coarse-to-fine (search_step), ranked by the reference's fixed-point score;
           asymmetric -> (max - min)/(L-1) and zero = min
    codes = nearest level (counted against exact per-row thresholds for L <= 16, so no
            per-value division), packed 8/bits per byte, little end first

fp8 scales need the row's scale-of-scales first: `_peak_kernel` (pass 1) writes each program's
largest group scale, torch reduces them per row. Rounding to the scale dtype and the scale
search live in `kernels.scale_triton`.
"""

from __future__ import annotations

import functools
import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .groupquant_ref import FP8_MAX, search_alphas, search_bits
from .hadamard import hadamard
from .hadamard_triton import split_dot
from .scale_triton import (
    FORMAT,
    MAX_COUNTED_LEVELS,
    _levels,
    _search,
    _store_scale,
    level_bounds,
    strict_mask,
)
from .spec import QuantSpec, ScaleDtype

COUNT_LEVELS_UP_TO = 4
"""The default lane: levels counted against thresholds for L <= this (INT2), by IEEE division
above. Lent H200, 2026-12-01, [12, 37440, 128] with the 16-candidate search: qvg-int2 1.97 ms
counted vs 2.20 by division (old kernel 2.83); qvg-int4 4.81 counted vs 2.21 by division (old
3.78). BENCHMARKS.md, "Quantize scale search"."""


PAIR_SCORE = True
"""Default of quantize's pair_score (INT2: candidates scored from the outer two thresholds,
the same scores; bit-exact against the full count in tests). Lent H200, 2026-12-02,
[12, 37440, 128]: quantize 0.94 ms (`tools/quant_probe.py time`); `bench codec` qvg-int2@2it
encode 2.81 / 3.05 ms with it against 3.12 / 3.18 without (two runs each, one call), the same
errors. BENCHMARKS.md, "Sixth session"."""


class Quantized(NamedTuple):
    codes: torch.Tensor  # uint8 [R, S, D*bits/8]
    scales: torch.Tensor  # scale dtype [R, S, D/G]
    zeros: torch.Tensor | None  # scale dtype [R, S, D/G] (asymmetric only)
    scale_of_scales: torch.Tensor | None  # fp32 [R] (fp8 scales only)


@triton.jit
def _residual(
    x_ptr,
    c_ptr,
    ids_ptr,
    row,
    R,
    S,
    C,
    offs_s,
    s_ok,
    g,
    D: tl.constexpr,
    G: tl.constexpr,
    T: tl.constexpr,
):
    """fp32 [BLOCK_S, G]: group g of x minus every stage's centroid, in stage order."""
    offs_c = g * G + tl.arange(0, G)
    r = tl.load(
        x_ptr + (row * S + offs_s[:, None]) * D + offs_c[None, :], mask=s_ok[:, None], other=0.0
    ).to(tl.float32)
    for t in tl.static_range(T):
        idx = tl.load(ids_ptr + (t * R + row) * S + offs_s, mask=s_ok, other=0).to(tl.int64)
        cen = tl.load(
            c_ptr + ((t * R + row) * C + idx[:, None]) * D + offs_c[None, :],
            mask=s_ok[:, None],
            other=0.0,
        )
        r = r - cen.to(tl.float32)
    return r


@triton.jit
def _rotated(
    x_ptr,
    c_ptr,
    ids_ptr,
    h_ptr,
    row,
    R,
    S,
    C,
    offs_s,
    s_ok,
    g,
    D: tl.constexpr,
    G: tl.constexpr,
    T: tl.constexpr,
    ROTATE: tl.constexpr,
    SPLIT_ROT: tl.constexpr,
):
    y = _residual(x_ptr, c_ptr, ids_ptr, row, R, S, C, offs_s, s_ok, g, D, G, T)
    if ROTATE:
        h = tl.load(h_ptr + tl.arange(0, G)[:, None] * G + tl.arange(0, G)[None, :])
        if SPLIT_ROT:
            y = split_dot(y, h, G, SPLIT_ROT == 1)
        else:
            y = tl.dot(y, h, input_precision="ieee")
    return y


@triton.jit
def _peak_kernel(
    x_ptr,
    c_ptr,
    ids_ptr,
    h_ptr,
    peak_ptr,
    R,
    S,
    C,
    D: tl.constexpr,
    G: tl.constexpr,
    T: tl.constexpr,
    LEVELS: tl.constexpr,
    SYM: tl.constexpr,
    ROTATE: tl.constexpr,
    SPLIT_ROT: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    """Pass 1 (fp8 scales): peak[row, block] = largest group scale (or |zero|) of the block."""
    row = tl.program_id(0).to(tl.int64)
    offs_s = tl.program_id(1) * BLOCK_S + tl.arange(0, BLOCK_S)
    s_ok = offs_s < S
    peak = tl.zeros((BLOCK_S,), tl.float32)
    for g in tl.static_range(D // G):
        y = _rotated(
            x_ptr, c_ptr, ids_ptr, h_ptr, row, R, S, C, offs_s, s_ok, g, D, G, T, ROTATE, SPLIT_ROT
        )
        if SYM:
            p = tl.math.div_rn(tl.max(tl.abs(y), axis=1), (LEVELS - 1) / 2)
        else:
            mn = tl.min(tl.where(s_ok[:, None], y, float("inf")), axis=1)
            mx = tl.max(tl.where(s_ok[:, None], y, -float("inf")), axis=1)
            p = tl.maximum(tl.math.div_rn(mx - mn, LEVELS - 1.0), tl.abs(mn))
        peak = tl.maximum(peak, tl.where(s_ok, p, 0.0))
    tl.store(peak_ptr + row * tl.num_programs(1) + tl.program_id(1), tl.max(peak, axis=0))


@triton.jit
def _quant_kernel(
    x_ptr,
    c_ptr,
    ids_ptr,
    h_ptr,
    alpha_ptr,
    bnd_ptr,
    sos_ptr,
    codes_ptr,
    scales_ptr,
    zeros_ptr,
    R,
    S,
    C,
    N_ALPHA,
    D: tl.constexpr,
    G: tl.constexpr,
    T: tl.constexpr,
    BITS: tl.constexpr,
    SYM: tl.constexpr,
    ROTATE: tl.constexpr,
    SPLIT_ROT: tl.constexpr,
    HAS_SOS: tl.constexpr,
    MANT: tl.constexpr,
    EMIN: tl.constexpr,
    BLOCK_S: tl.constexpr,
    COUNT: tl.constexpr,
    STRICT: tl.constexpr,
    F: tl.constexpr,
    STEP: tl.constexpr,
):
    """COUNT: levels by thresholds (scale_triton.level_bounds at bnd_ptr, their strict flags as
    the bit mask STRICT), else by IEEE division (same levels). F: the search's fixed-point
    bits, |yq| <= 2^F (groupquant_ref.search_bits). STEP: the coarse step of the search
    (QuantSpec.search_step); N_ALPHA 1 skips the search."""
    LEVELS: tl.constexpr = 1 << BITS
    K: tl.constexpr = 8 // BITS  # codes per byte
    NG: tl.constexpr = D // G
    row = tl.program_id(0).to(tl.int64)
    offs_s = tl.program_id(1) * BLOCK_S + tl.arange(0, BLOCK_S)
    s_ok = offs_s < S
    sos = tl.load(sos_ptr + row) if HAS_SOS else 1.0
    for g in tl.static_range(NG):
        y = _rotated(
            x_ptr, c_ptr, ids_ptr, h_ptr, row, R, S, C, offs_s, s_ok, g, D, G, T, ROTATE, SPLIT_ROT
        )
        if SYM:
            s0 = tl.math.div_rn(tl.max(tl.abs(y), axis=1), (LEVELS - 1) / 2)
            if N_ALPHA > 1:
                best_st, best_s = _search(
                    y, s0, alpha_ptr, N_ALPHA, sos, bnd_ptr, HAS_SOS, MANT, EMIN, LEVELS, COUNT,
                    STRICT, F, STEP,
                )  # fmt: skip
            else:
                best_st, best_s = _store_scale(s0 * tl.load(alpha_ptr), sos, HAS_SOS, MANT, EMIN)
            q = _levels(y, best_s, bnd_ptr, LEVELS, COUNT, STRICT)
        else:
            mn = tl.min(y, axis=1)
            st, s = _store_scale(
                tl.math.div_rn(tl.max(y, axis=1) - mn, LEVELS - 1.0), sos, HAS_SOS, MANT, EMIN
            )
            zst, z = _store_scale(mn, sos, HAS_SOS, MANT, EMIN)
            safe = tl.where(s > 0, s, 1.0)
            q = tl.floor(tl.math.div_rn(y - z[:, None], safe[:, None]) + 0.5)
            q = tl.minimum(tl.maximum(q, 0.0), LEVELS - 1.0)
            tl.store(
                zeros_ptr + (row * S + offs_s) * NG + g,
                zst.to(zeros_ptr.dtype.element_ty),
                mask=s_ok,
            )
            best_st = st
        tl.store(
            scales_ptr + (row * S + offs_s) * NG + g,
            best_st.to(scales_ptr.dtype.element_ty),
            mask=s_ok,
        )
        _pack_store(codes_ptr, q, row, S, offs_s, s_ok, g, D, G, BITS, K)


@triton.jit
def _pack_store(
    codes_ptr,
    q,
    row,
    S,
    offs_s,
    s_ok,
    g,
    D: tl.constexpr,
    G: tl.constexpr,
    BITS: tl.constexpr,
    K: tl.constexpr,
):
    """Pack fp32 levels q [BLOCK_S, G] K per byte (code j at bits (j%K)*BITS of byte j//K)."""
    CB: tl.constexpr = D // K
    qi = q.to(tl.int32)
    if K > 1:
        shifts = tl.arange(0, K) * BITS
        qi = tl.sum(tl.reshape(qi, (q.shape[0], G // K, K)) << shifts[None, None, :], axis=2)
    offs_b = g * (G // K) + tl.arange(0, G // K)
    tl.store(
        codes_ptr + (row * S + offs_s[:, None]) * CB + offs_b[None, :],
        qi.to(tl.uint8),
        mask=s_ok[:, None],
    )


def _launch(x: torch.Tensor, spec: QuantSpec, block_s: int | None, num_warps: int | None):
    """quantize's (block_s, num_warps): with the tensor-core rotation, 128 x 8 for INT2 and
    64 x 4 above (lent H200, 2026-12-02, [12, 37440, 128]: int2 1.18 ms vs 1.29 at 64 x 4 and
    2.17 at 64 x 8; int4 1.92 vs 2.20 at 128 x 8); else 64 x 8 (the FMA dot's)."""
    if block_s is None and num_warps is None and spec.rotate and _split_rotation(x, 64):
        return (128, 8) if spec.levels <= 4 else (64, 4)
    return block_s or 64, num_warps or 8


def _split_rotation(x: torch.Tensor, block_s: int) -> bool:
    """Default of quantize's split_rot: real CUDA Triton (the interpreter runs dots in numpy, so
    it keeps the FMA path the CPU tests pin bit-for-bit) and a tile the bf16 dot accepts."""
    return x.is_cuda and os.environ.get("TRITON_INTERPRET", "0") in ("", "0") and block_s >= 16


def _stages(centroids: torch.Tensor | None, ids: torch.Tensor | None, x: torch.Tensor):
    """(centroids [T, R, C, D], ids [T, R, S], T, C) with dummies when there are no stages."""
    if centroids is None or ids is None or centroids.shape[0] == 0:
        return x, torch.zeros(1, dtype=torch.uint8, device=x.device), 0, 1
    return centroids.contiguous(), ids.contiguous(), centroids.shape[0], centroids.shape[2]


@functools.lru_cache(maxsize=16)
def _bounds(levels: int, device: torch.device) -> tuple[torch.Tensor, int]:
    """(level_bounds on `device`, their strict mask), once per level count and device."""
    b = level_bounds(levels)
    return b.to(device), strict_mask(b)


def quantize(
    x: torch.Tensor,
    centroids: torch.Tensor | None,
    ids: torch.Tensor | None,
    spec: QuantSpec,
    block_s: int | None = None,
    num_warps: int | None = None,
    exact: bool | None = None,
    split_rot: bool | int | None = None,
    pair_score: bool | None = None,
) -> Quantized:
    """Fused subtract-centroids + rotate + choose scale + quantize + pack of QVG residuals.

    x: [R, S, D] any float dtype (read as fp32); centroids: [T, R, C, D] (bf16/fp16/fp32) or
    None; ids: [T, R, S] uint8/int16/int32/int64 or None. Returns `Quantized` (codes uint8
    [R, S, D*bits/8], scales [R, S, D/G] in spec.scale_dtype, zeros likewise or None,
    scale_of_scales fp32 [R] or None), equal to groupquant_ref on the reference's residual.
    Bytes: reads R*S*D*x.itemsize + T*R*S*(ids.itemsize + D*c.itemsize) (gathered centroid
    rows, L2-resident table), twice when scales are fp8 (pass 1 for the scale-of-scales);
    writes R*S*D*bits/8 codes + R*S*(D/G)*scale.itemsize (x2 with zeros) + 4R.
    exact: True = levels by IEEE division, False = counted against per-row thresholds (L <= 16),
    None = counted for L <= COUNT_LEVELS_UP_TO. Both give the same codes and scales (tested).
    split_rot: rotate on bf16 tensor cores (`hadamard_triton.split_dot`), not the fp32 FMA
    dot; None = on CUDA with a tensor-core tile (block_s >= 16), the FMA dot under the
    interpreter; 2 = the split with fp32 dots (how the CPU tests check the split itself).
    pair_score: INT2's counted search scores each candidate from its outer two thresholds
    (`scale_triton._pair_sums`: same scores, fewer operations per value); None = PAIR_SCORE.
    """
    r, s, d = x.shape
    g = spec.group_size
    block_s, num_warps = _launch(x, spec, block_s, num_warps)
    if d % g:
        raise ValueError(f"quantize: head_dim {d} is not a multiple of group_size {g}")
    x = x.contiguous()
    cen, idt, t, c = _stages(centroids, ids, x)
    h = hadamard(g, x.device)
    fp8 = spec.scale_dtype is ScaleDtype.FP8
    grid = (r, triton.cdiv(s, block_s))
    # no fma contraction: each candidate's score is computed like torch's (separate multiply and
    # subtract, IEEE fp64), so near-equal candidates are ranked the same way
    split = _split_rotation(x, block_s) if split_rot is None else split_rot
    common = dict(D=d, G=g, T=t, SYM=spec.symmetric, ROTATE=spec.rotate, BLOCK_S=block_s)
    common["SPLIT_ROT"] = int(split) if spec.rotate else 0
    launch = dict(num_warps=num_warps, enable_fp_fusion=False)
    sos = None
    if fp8:
        peak = torch.empty(r, grid[1], dtype=torch.float32, device=x.device)
        _peak_kernel[grid](x, cen, idt, h, peak, r, s, c, LEVELS=spec.levels, **common, **launch)
        m = peak.amax(-1)
        sos = torch.where(m > 0, m / FP8_MAX, torch.ones_like(m))
    sdt = spec.scale_dtype.torch_dtype
    codes = torch.empty(r, s, d * spec.bits // 8, dtype=torch.uint8, device=x.device)
    scales = torch.empty(r, s, d // g, dtype=sdt, device=x.device)
    zeros = None if spec.symmetric else torch.empty_like(scales)
    alphas = search_alphas(spec, x.device).to(torch.float32) if spec.symmetric else h
    mant, emin = FORMAT[spec.scale_dtype]
    exact = spec.levels > COUNT_LEVELS_UP_TO if exact is None else exact
    count = spec.symmetric and spec.levels <= MAX_COUNTED_LEVELS and not exact
    pair = PAIR_SCORE if pair_score is None else pair_score
    pair = count and pair and spec.levels == 4 and search_bits(spec) <= 20
    bnd, strict = _bounds(spec.levels, x.device) if count else (h, 0)
    _quant_kernel[grid](
        x,
        cen,
        idt,
        h,
        alphas,
        bnd,
        sos if fp8 else h,
        codes,
        scales,
        scales if zeros is None else zeros,
        r,
        s,
        c,
        alphas.numel() if spec.symmetric else 0,
        BITS=spec.bits,
        HAS_SOS=fp8,
        MANT=mant,
        EMIN=emin,
        COUNT=2 if pair else int(count),
        STRICT=strict,
        F=search_bits(spec),
        STEP=spec.search_step,
        **common,
        **launch,
    )
    return Quantized(codes, scales, zeros, sos)
