"""Scale choice of the fused QVG quantize kernel, as Triton helpers: rounding a scale to its
storage dtype exactly as `groupquant_ref.store_scale` does, and the least-error search over the
reference's candidate scales.

`round_to` rounds to nearest (ties to even) in fp32 arithmetic because the Triton interpreter
truncates fp32 -> bf16/fp8 casts; the rounded value then converts exactly on every backend.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .spec import ScaleDtype

# (mantissa bits, smallest normal exponent) of each scale dtype, for round_to. bf16's true
# minimum (-126) is raised to -119 to keep the ulp a normal fp32; scales below 2^-119 round
# coarser than bf16 would (never met: fp32 K/V values are far larger).
FORMAT = {ScaleDtype.FP8: (3, -6), ScaleDtype.FP16: (10, -14), ScaleDtype.BF16: (7, -119)}


@triton.jit
def round_to(v, MANT: tl.constexpr, EMIN: tl.constexpr):
    """fp32 v rounded (nearest, ties to even) to MANT mantissa bits, subnormal below 2^EMIN."""
    e = ((v.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127
    e = tl.maximum(e, EMIN) - MANT  # exponent of one ulp of the target format
    ulp = ((e + 127) << 23).to(tl.float32, bitcast=True)
    inv = ((127 - e) << 23).to(tl.float32, bitcast=True)
    return ((v * inv + 12582912.0) - 12582912.0) * ulp  # 1.5*2^23 rounds |a| < 2^22 to even


@triton.jit
def _store_scale(s, sos, HAS_SOS: tl.constexpr, MANT: tl.constexpr, EMIN: tl.constexpr):
    """(stored value, fp32 value decode will use): groupquant_ref.store_scale / load_scale."""
    if HAS_SOS:
        st = round_to(tl.minimum(tl.maximum(tl.math.div_rn(s, sos), -448.0), 448.0), MANT, EMIN)
        return st, st * sos
    st = round_to(s, MANT, EMIN)
    return st, st


@triton.jit
def _search(
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
            q = _quant_sym(y, s, LEVELS)
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
def _quant_sym(y, s, LEVELS: tl.constexpr):
    """groupquant_ref.quantize_sym as fp32 levels [BLOCK_S, G]; s [BLOCK_S] (0 -> mid code)."""
    safe = tl.where(s > 0, s, 1.0)
    q = tl.floor(tl.math.div_rn(y, safe[:, None]) + LEVELS / 2)
    q = tl.minimum(tl.maximum(q, 0.0), LEVELS - 1.0)
    return tl.where(s[:, None] > 0, q, LEVELS // 2)
