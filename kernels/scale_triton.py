"""Scale choice of the fused QVG quantize kernel, as Triton helpers: rounding a scale to its
storage dtype exactly as `groupquant_ref.store_scale` does, the reference's levels without a
division per value, and the least-error search over the reference's candidate scales.

`round_to` rounds to nearest (ties to even) in fp32 arithmetic because the Triton interpreter
truncates fp32 -> bf16/fp8 casts; the rounded value then converts exactly on every backend.

Levels by thresholds (`level_bounds`, `_levels`): the reference's level of y under scale s > 0,
floor(rn(rn(y / s) + L/2)) clamped to [0, L-1], is monotone in y, so it equals the number of
k in 1..L-1 with y >= T_k(s). T_k is the smallest fp32 y with y / s >= M_k (> M_k where the
tie rounds down), M_k a 25-bit constant found once on the host with the reference's own fp32
ops; M_k * s is exact in fp64, so T_k is exact and the count equals the IEEE division's level
for every y: no per-value division, no near-boundary fallback.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .spec import ScaleDtype

# (mantissa bits, smallest normal exponent) of each scale dtype, for round_to. bf16's true
# minimum (-126) is raised to -119 to keep the ulp a normal fp32; scales below 2^-119 round
# coarser than bf16 would (never met: fp32 K/V values are far larger).
FORMAT = {ScaleDtype.FP8: (3, -6), ScaleDtype.FP16: (10, -14), ScaleDtype.BF16: (7, -119)}

# Levels up to this count are found by counting thresholds (L - 1 compares per value); more
# (INT8) by IEEE division.
MAX_COUNTED_LEVELS = 16


def _f32(key: int) -> torch.Tensor:
    """The fp32 whose order key (see _key) is `key`."""
    bits = key if key >= 0 else (-key) | (1 << 31)
    return torch.tensor([bits], dtype=torch.int64).to(torch.int32).view(torch.float32)[0]


def _key(v: float) -> int:
    """Integer order key of an fp32: monotone in the value, consecutive for neighbours."""
    bits = int(torch.tensor([v], dtype=torch.float32).view(torch.int32)[0])
    return bits if bits >= 0 else -(bits & 0x7FFFFFFF)


def level_bounds(levels: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """fp64 [2, L-1]: row 0 the bounds M_k, row 1 strict_k (0/1), k = 1..L-1, such that for any
    fp32 y and s > 0 the reference's level floor(rn(rn(y/s) + L/2)) >= k iff y/s >= M_k
    (y/s > M_k where strict_k). Found by bisection over fp32 quotients u with the reference's own
    fp32 ops (floor(u + L/2) is monotone in u)."""
    bounds, strict = [], []
    for k in range(1, levels):
        lo, hi = _key(k - levels / 2 - 1), _key(k - levels / 2)  # level k-1 and k
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if bool(torch.floor(_f32(mid) + levels / 2) >= k):
                hi = mid
            else:
                lo = mid
        u, below = _f32(hi), _f32(lo)  # u: smallest fp32 quotient of level >= k
        bounds.append((u.double() + below.double()).item() / 2)  # exact: 25 bits
        strict.append(float(hi & 1))  # a tie rounds to the even mantissa
    return torch.tensor([bounds, strict], dtype=torch.float64, device=device)


def strict_mask(bounds: torch.Tensor) -> int:
    """level_bounds' strict flags as a bit mask (bit k-1 = strict_k), a kernel constexpr."""
    return sum(1 << k for k, v in enumerate(bounds[1].tolist()) if v)


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
def _threshold(s64, bnd_ptr, k, STRICT: tl.constexpr):
    """fp32 [BLOCK_S]: smallest fp32 y with y/s >= M_k (> M_k if STRICT), s64 = fp64(s) > 0."""
    p = tl.load(bnd_ptr + k) * s64  # exact: 25 x 24 significant bits
    t = p.to(tl.float32)  # nearest: the threshold or one step below it
    if STRICT:
        low = t.to(tl.float64) <= p
    else:
        low = t.to(tl.float64) < p
    bits = t.to(tl.int32, bitcast=True)  # t < 0 steps up by -1 (t = -0 is never low: p < 0)
    nxt = (bits + tl.where(t >= 0, 1, -1)).to(tl.float32, bitcast=True)
    return tl.where(low, nxt, t)


@triton.jit
def _levels(y, s, bnd_ptr, LEVELS: tl.constexpr, COUNT: tl.constexpr, STRICT: tl.constexpr,
            ZERO_MID: tl.constexpr = True):  # fmt: skip
    """groupquant_ref.quantize_sym as fp32 levels [BLOCK_S, G] of y, scales s [BLOCK_S] (0 ->
    the middle level): by thresholds (COUNT; STRICT: bit k-1 = strict_k of level_bounds) or by
    IEEE division, the same levels either way. ZERO_MID False leaves rows with s = 0 unfixed
    (finite levels; for callers that multiply by s anyway)."""
    if COUNT:
        s64 = s.to(tl.float64)
        q = tl.zeros(y.shape, tl.float32)
        for k in tl.static_range(1, LEVELS):
            t = _threshold(s64, bnd_ptr, k - 1, (STRICT >> (k - 1)) & 1)
            q += tl.where(y >= t[:, None], 1.0, 0.0)
    else:
        safe = tl.where(s > 0, s, 1.0)
        q = tl.floor(tl.math.div_rn(y, safe[:, None]) + LEVELS / 2)
        q = tl.minimum(tl.maximum(q, 0.0), LEVELS - 1.0)
    if ZERO_MID:
        q = tl.where(s[:, None] > 0, q, LEVELS // 2)
    return q


@triton.jit
def _score(y, yq, w, s, bnd_ptr, K, LEVELS: tl.constexpr, COUNT: tl.constexpr,
           STRICT: tl.constexpr):  # fmt: skip
    """fp64 [BLOCK_S] ranking score of scales s (groupquant_ref.search_score): with c = 2q-(L-1)
    and s' = s*w, sum((yq - c*s'/2)^2) - sum(yq^2) = s'(s' sum(c^2) - 4 sum(yq*c)) / 4. Both sums
    are of integers < 2^24 in fp32, exact in any order. A row with s = 0 scores 0 whatever its
    levels (s' = 0), so they are not fixed to the middle level here. COUNT == 2: `_pair_sums`."""
    if COUNT == 2:
        a, b = _pair_sums(y, yq, s, bnd_ptr, K, STRICT)
    else:
        c = 2.0 * _levels(y, s, bnd_ptr, LEVELS, COUNT, STRICT, False) - (LEVELS - 1.0)
        a = tl.sum(yq * c, axis=1).to(tl.float64)
        b = tl.sum(c * c, axis=1).to(tl.float64)
    sp = (s * w).to(tl.float64)
    return sp * (sp * b - 4.0 * a)


@triton.jit
def _pair_sums(y, yq, s, bnd_ptr, K, STRICT: tl.constexpr):
    """INT2's (sum(yq*c), sum(c^2)) from the outer thresholds only, equal to the full count's:
    with f_k = [y >= T_k], q = f1 + f2 + f3 and c = 2q - 3,
        sum(c^2)  = 9G + 8 sum(f3 - f1)              (c^2 = 9 exactly where f1 = 0 or f3 = 1)
        sum(yq*c) = 2 sum(yq (f1 + f3)) + K,   K = sum(yq (2 [y >= 0] - 3)) per row (`_pair_k`)
    f2 = [y >= 0] except for y in [T2, 0), |y| <= 2^-23 s, where yq = rint(y w) = 0 whenever
    F <= 20 (|y w| < 2^(F - 22); s < 2^(E+1) after fp8 rounding), so those terms are 0 either
    way. Sums of integers below 2^24 (fp32-exact); a = 2A + K in fp64."""
    s64 = s.to(tl.float64)
    t1 = _threshold(s64, bnd_ptr, 0, STRICT & 1)
    t3 = _threshold(s64, bnd_ptr, 2, (STRICT >> 2) & 1)
    f1 = tl.where(y >= t1[:, None], 1.0, 0.0)
    f3 = tl.where(y >= t3[:, None], 1.0, 0.0)
    a = 2.0 * tl.sum(yq * (f1 + f3), axis=1).to(tl.float64) + K
    b = 9.0 * y.shape[1] + 8.0 * tl.sum(f3 - f1, axis=1).to(tl.float64)
    return a, b


@triton.jit
def _pair_k(y, yq):
    """fp64 [BLOCK_S]: the candidate-free part of `_pair_sums`' sum(yq*c)."""
    return tl.sum(yq * tl.where(y >= 0.0, -1.0, -3.0), axis=1).to(tl.float64)


@triton.jit
def _try(b_sc, b_i, b_st, b_s, i, ok, y, yq, w, s0, alpha_ptr, sos, bnd_ptr, K, HAS_SOS, MANT,
         EMIN, LEVELS, COUNT, STRICT):  # fmt: skip
    """Evaluate candidate i (scalar or per-row int32, valid where `ok`) against the running
    best (score, index, stored, fp32 scale): a smaller score wins, the smaller index on ties."""
    st, s = _store_scale(s0 * tl.load(alpha_ptr + i), sos, HAS_SOS, MANT, EMIN)
    sc = _score(y, yq, w, s, bnd_ptr, K, LEVELS, COUNT, STRICT)
    win = ok & ((sc < b_sc) | ((sc == b_sc) & (i < b_i)))
    return (
        tl.where(win, sc, b_sc),
        tl.where(win, i, b_i),
        tl.where(win, st, b_st),
        tl.where(win, s, b_s),
    )


@triton.jit
def _search(
    y,
    s0,
    alpha_ptr,
    N_ALPHA,
    sos,
    bnd_ptr,
    HAS_SOS: tl.constexpr,
    MANT: tl.constexpr,
    EMIN: tl.constexpr,
    LEVELS: tl.constexpr,
    COUNT: tl.constexpr,
    STRICT: tl.constexpr,
    F: tl.constexpr,
    STEP: tl.constexpr,
):
    """Least-score candidate scale of each row of y [BLOCK_S, G]: (stored, fp32 value), as
    groupquant_ref.choose_qparams. yq = rint(y * w), w = 2^(F - E) with max|y| < 2^E, so
    |yq| <= 2^F. STEP 1: every candidate in order; STEP k: candidates 0, k, 2k, ..., then the
    k-1 on each side of the best of those. COUNT 2 (INT2 only): scores from the outer two
    thresholds (`_pair_sums`), the same scores."""
    amax = tl.max(tl.abs(y), axis=1)
    e = tl.maximum(((amax.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 126, F - 126)
    w = ((127 + F - e) << 23).to(tl.float32, bitcast=True)
    yq = (y * w[:, None] + 12582912.0) - 12582912.0  # 1.5*2^23: rint, ties to even
    if COUNT == 2:
        K = _pair_k(y, yq)
    else:
        K = tl.zeros((y.shape[0],), tl.float64)
    always = tl.full((y.shape[0],), 1, tl.int1)
    sc = tl.full((y.shape[0],), float("inf"), tl.float64)
    bi = tl.full((y.shape[0],), N_ALPHA, tl.int32)
    bst, bs = s0, s0
    for i in range(0, N_ALPHA, STEP):
        sc, bi, bst, bs = _try(sc, bi, bst, bs, i, always, y, yq, w, s0, alpha_ptr, sos, bnd_ptr,
                               K, HAS_SOS, MANT, EMIN, LEVELS, COUNT, STRICT)  # fmt: skip
    if STEP > 1:
        centre = bi
        for d in tl.static_range(1 - STEP, STEP):
            if d != 0:
                i = centre + d
                ok = (i >= 0) & (i < N_ALPHA)
                i = tl.minimum(tl.maximum(i, 0), N_ALPHA - 1)
                sc, bi, bst, bs = _try(sc, bi, bst, bs, i, ok, y, yq, w, s0, alpha_ptr, sos,
                                       bnd_ptr, K, HAS_SOS, MANT, EMIN, LEVELS, COUNT,
                                       STRICT)  # fmt: skip
    return bst, bs
