"""The fused QVG quantize kernel as shipped before the threshold search (main @ 69cc629), kept
for timing against the product kernel (kernels/quant_triton.py); not a product path.

Its search found each value's level by y * (1/s), flagged values within 2^-16 of a level
boundary and then searched the whole block's group again with IEEE division; errors were fp32
squares rounded to a fixed-point grid and summed in fp64. On INT2 groups of 64 and blocks of 64
tokens x 16 candidates about 2 values per block land near a boundary, so most blocks ran both
searches. `quantize_old` ranks by that exact fp32 squared error, `old_choose_qparams` is the
matching torch reference (for the CPU quality comparison in tools/quant_probe.py).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels import groupquant_ref as gq
from kernels.hadamard import hadamard
from kernels.quant_triton import Quantized, _pack_store, _peak_kernel, _rotated, _stages
from kernels.scale_triton import FORMAT, _store_scale
from kernels.spec import QuantSpec, ScaleDtype


def old_choose_qparams(x: torch.Tensor, spec: QuantSpec) -> gq.QParams:
    """The old reference's symmetric search: least fp32 squared error, first on ties."""
    g = x.reshape(*x.shape[:-1], -1, spec.group_size)
    s0 = g.abs().amax(-1) / ((spec.levels - 1) / 2)
    sos = gq._sos(s0, spec.scale_dtype)
    best_err, best = None, None
    for alpha in gq.search_alphas(spec, x.device).tolist():
        stored = gq.store_scale(s0 * alpha, spec.scale_dtype, sos)
        s = gq.load_scale(stored, sos)[..., None]
        q = gq.quantize_sym(g, s, spec.levels)
        err = (g - gq.dequantize_sym(q, s, spec.levels)).square().sum(-1)
        if best is None or best_err is None:
            best_err, best = err, stored
        else:
            better = err < best_err
            best_err, best = torch.where(better, err, best_err), torch.where(better, stored, best)
    return gq.QParams(best, None, sos)


@triton.jit
def _search_old(
    y,
    s0,
    grid,
    alpha_ptr,
    N_ALPHA,
    sos,
    HAS_SOS: tl.constexpr,
    MANT: tl.constexpr,
    EMIN: tl.constexpr,
    LEVELS: tl.constexpr,
    EXACT: tl.constexpr,
):
    """Least-error candidate scale of each row of y [BLOCK_S, G]: (stored, fp32 value, near).

    Candidates in the reference's order, strictly smaller error wins (first wins ties). Errors
    are sum((y - (q - (L-1)/2) * s)^2): each fp32 square (the reference's) is rounded to the
    row's fixed-point `grid` and summed exactly in fp64, so the ranking does not depend on the
    launch config (reduction order).
    EXACT: levels by IEEE division (as the reference). Otherwise by y * (1/s) (one division per
    row instead of per value); `near` (int32 [BLOCK_S]) is 1 where a value lands within 2^-16 of
    a level boundary, the only place the two can differ (|error| <= 3 ulp of y/s), so the
    result equals the exact search wherever no row of the block is flagged.
    """
    best_err = tl.full((y.shape[0],), float("inf"), tl.float64)
    best_st = tl.zeros((y.shape[0],), tl.float32)
    best_s = tl.zeros((y.shape[0],), tl.float32)
    near = tl.zeros(y.shape, tl.int32)
    for i in range(N_ALPHA):  # first candidate wins ties, as in the reference
        st, s = _store_scale(s0 * tl.load(alpha_ptr + i), sos, HAS_SOS, MANT, EMIN)
        if EXACT:
            q = _quant_sym_old(y, s, LEVELS)
        else:
            safe = tl.where(s > 0, s, 1.0)
            z = y * tl.math.div_rn(1.0, safe)[:, None] + LEVELS / 2
            q = tl.floor(z)
            f = z - q
            hit = ((f < 1.0 / 65536) | (f > 1.0 - 1.0 / 65536)) & (z > 0.5) & (z < LEVELS - 0.5)
            near |= (hit & (y != 0.0) & (s[:, None] > 0)).to(tl.int32)
            q = tl.minimum(tl.maximum(q, 0.0), LEVELS - 1.0)
            q = tl.where(s[:, None] > 0, q, LEVELS // 2)
        d = y - (q - (LEVELS - 1) / 2) * s[:, None]
        t = (d * d).to(tl.float64) * grid[:, None]  # the reference's fp32 square, exact scaling
        t = (t + 6755399441055744.0) - 6755399441055744.0  # 1.5 * 2^52: round to an integer
        err = tl.sum(t, axis=1)
        better = (err < best_err) | (i == 0)
        best_err = tl.where(better, err, best_err)
        best_st = tl.where(better, st, best_st)
        best_s = tl.where(better, s, best_s)
    return best_st, best_s, tl.max(near, axis=1)


@triton.jit
def _quant_sym_old(y, s, LEVELS: tl.constexpr):
    """groupquant_ref.quantize_sym as fp32 levels [BLOCK_S, G]; s [BLOCK_S] (0 -> mid code)."""
    safe = tl.where(s > 0, s, 1.0)
    q = tl.floor(tl.math.div_rn(y, safe[:, None]) + LEVELS / 2)
    q = tl.minimum(tl.maximum(q, 0.0), LEVELS - 1.0)
    return tl.where(s[:, None] > 0, q, LEVELS // 2)


@triton.jit
def _quant_kernel_old(
    x_ptr,
    c_ptr,
    ids_ptr,
    h_ptr,
    alpha_ptr,
    sos_ptr,
    codes_ptr,
    scales_ptr,
    R,
    S,
    C,
    N_ALPHA,
    D: tl.constexpr,
    G: tl.constexpr,
    T: tl.constexpr,
    BITS: tl.constexpr,
    ROTATE: tl.constexpr,
    HAS_SOS: tl.constexpr,
    MANT: tl.constexpr,
    EMIN: tl.constexpr,
    BLOCK_S: tl.constexpr,
    EXACT: tl.constexpr,
    EK: tl.constexpr,
):
    """main's _quant_kernel, symmetric path only (the search is what differs)."""
    LEVELS: tl.constexpr = 1 << BITS
    K: tl.constexpr = 8 // BITS
    NG: tl.constexpr = D // G
    row = tl.program_id(0).to(tl.int64)
    offs_s = tl.program_id(1) * BLOCK_S + tl.arange(0, BLOCK_S)
    s_ok = offs_s < S
    sos = tl.load(sos_ptr + row) if HAS_SOS else 1.0
    for g in tl.static_range(NG):
        y = _rotated(
            x_ptr, c_ptr, ids_ptr, h_ptr, row, R, S, C, offs_s, s_ok, g, D, G, T, ROTATE, 0
        )
        s0 = tl.math.div_rn(tl.max(tl.abs(y), axis=1), (LEVELS - 1) / 2)
        st0, s_0 = _store_scale(s0 * tl.load(alpha_ptr), sos, HAS_SOS, MANT, EMIN)
        e = (tl.maximum(s0, s_0).to(tl.int32, bitcast=True) >> 23) & 0xFF
        e = tl.maximum(e, 27)
        grid = ((1023 + EK - 2 * (e - 127)).to(tl.int64) << 52).to(tl.float64, bitcast=True)
        best_st, best_s, near = _search_old(
            y, s0, grid, alpha_ptr, N_ALPHA, sos, HAS_SOS, MANT, EMIN, LEVELS, EXACT
        )
        if not EXACT:
            if tl.max(near, axis=0) != 0:
                best_st, best_s, near = _search_old(
                    y, s0, grid, alpha_ptr, N_ALPHA, sos, HAS_SOS, MANT, EMIN, LEVELS, True
                )
        q = _quant_sym_old(y, best_s, LEVELS)
        tl.store(
            scales_ptr + (row * S + offs_s) * NG + g,
            best_st.to(scales_ptr.dtype.element_ty),
            mask=s_ok,
        )
        _pack_store(codes_ptr, q, row, S, offs_s, s_ok, g, D, G, BITS, K)


def quantize_old(x, centroids, ids, spec: QuantSpec, block_s=64, num_warps=8, exact=False):
    """The old kernel's launch (symmetric specs only): same arguments and result as
    kernels.quant_triton.quantize."""
    if not spec.symmetric:
        raise ValueError("quantize_old: symmetric specs only")
    r, s, d = x.shape
    g = spec.group_size
    x = x.contiguous()
    cen, idt, t, c = _stages(centroids, ids, x)
    h = hadamard(g, x.device)
    fp8 = spec.scale_dtype is ScaleDtype.FP8
    grid = (r, triton.cdiv(s, block_s))
    common = dict(D=d, G=g, T=t, ROTATE=spec.rotate, BLOCK_S=block_s)
    launch = dict(num_warps=num_warps, enable_fp_fusion=False)
    sos = None
    if fp8:
        peak = torch.empty(r, grid[1], dtype=torch.float32, device=x.device)
        _peak_kernel[grid](
            x,
            cen,
            idt,
            h,
            peak,
            r,
            s,
            c,
            LEVELS=spec.levels,
            SYM=True,
            SPLIT_ROT=0,
            **common,
            **launch,
        )
        m = peak.amax(-1)
        sos = torch.where(m > 0, m / gq.FP8_MAX, torch.ones_like(m))
    codes = torch.empty(r, s, d * spec.bits // 8, dtype=torch.uint8, device=x.device)
    scales = torch.empty(r, s, d // g, dtype=spec.scale_dtype.torch_dtype, device=x.device)
    alphas = gq.search_alphas(spec, x.device).to(torch.float32)
    mant, emin = FORMAT[spec.scale_dtype]
    _quant_kernel_old[grid](
        x, cen, idt, h, alphas, sos if fp8 else h, codes, scales, r, s, c, alphas.numel(),
        BITS=spec.bits, HAS_SOS=fp8, MANT=mant, EMIN=emin, EXACT=exact,
        EK=44 - (g.bit_length() - 1), **common, **launch,
    )  # fmt: skip
    return Quantized(codes, scales, None, sos)
