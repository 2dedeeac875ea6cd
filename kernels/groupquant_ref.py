"""Pure-torch (fp32) reference of group quantization: choose_qparams -> quantize -> dequantize,
plus bit packing. The Triton kernels in `kernels.quant_pack` are tested against this.

Grids, for L = 2^bits levels and a group scale s:

    symmetric (full range):  value(q) = (q - (L-1)/2) * s        q in [0, L-1]
                             e.g. INT2: -1.5s, -0.5s, +0.5s, +1.5s (all 4 codes used;
                             the official QVG's absmax grid uses only -1, 0, +1)
                             q = clamp(floor(v / s + L/2), 0, L-1)   (nearest level)
    asymmetric:              value(q) = q * s + z,  z = group min,  s = (max - min)/(L-1)
                             q = clamp(floor((v - z) / s + 1/2), 0, L-1)

Scales are stored in `ScaleDtype`; for fp8-e4m3 a per-row fp32 scale-of-scales maps the largest
absmax scale to 448 (the e4m3 maximum), so any input magnitude keeps 3 mantissa bits.
Scale search (symmetric only) tries s = alpha * s_absmax for `search_grid` alphas in
[search_min, 1], each after rounding to the stored dtype, and keeps the least squared error
(the earlier candidate on ties). The error is ranked in fixed point (`search_score`): each group
is scaled by a power of two to integers yq with |yq| <= 2^F (F = 16 for INT2 groups of 64; the
largest value keeps 16-17 bits) and the score is the exact squared error of yq, from two integer
sums; so it is independent of summation order, and the Triton kernel ranks bit-identically.
With `search_step` k > 1 the search is coarse-to-fine: candidates 0, k, 2k, ... first, then
the k-1 on each side of the best of those.

Bytes per group of G values: G*bits/8 (codes) + scale bytes (+ zero bytes when asymmetric).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .spec import QuantSpec, ScaleDtype

FP8_MAX = 448.0


class QParams(NamedTuple):
    """Stored quantization parameters; `scales`/`zeros` are [..., n_groups] in the scale dtype."""

    scales: torch.Tensor
    zeros: torch.Tensor | None
    scale_of_scales: torch.Tensor | None  # fp32 [...rows] (leading dims minus the last two)


def search_alphas(spec: QuantSpec, device: torch.device | str = "cpu") -> torch.Tensor:
    """Candidate scale multipliers, largest (1.0 = absmax) first."""
    if not spec.scale_search or spec.search_grid == 1:
        return torch.ones(1, device=device)
    return torch.linspace(1.0, spec.search_min, spec.search_grid, device=device)


def _grouped(x: torch.Tensor, group: int) -> torch.Tensor:
    if x.shape[-1] % group:
        raise ValueError(f"last dim {x.shape[-1]} is not a multiple of group_size {group}")
    return x.reshape(*x.shape[:-1], x.shape[-1] // group, group)


def _sos(peak: torch.Tensor, dtype: ScaleDtype) -> torch.Tensor | None:
    """fp32 scale-of-scales per row ([..., S, n_groups] -> [...]), or None if not fp8."""
    if dtype is not ScaleDtype.FP8:
        return None
    m = peak.flatten(-2).amax(-1)
    return torch.where(m > 0, m / FP8_MAX, torch.ones_like(m))


def store_scale(s: torch.Tensor, dtype: ScaleDtype, sos: torch.Tensor | None) -> torch.Tensor:
    """Round fp32 scales [..., S, G] to the storage dtype (dividing by the row's sos)."""
    if sos is None:
        return s.to(dtype.torch_dtype)
    return (s / sos[..., None, None]).clamp(-FP8_MAX, FP8_MAX).to(dtype.torch_dtype)


def load_scale(stored: torch.Tensor, sos: torch.Tensor | None) -> torch.Tensor:
    """Inverse of store_scale, in fp32."""
    s = stored.to(torch.float32)
    return s if sos is None else s * sos[..., None, None]


def quantize_sym(v: torch.Tensor, s: torch.Tensor, levels: int) -> torch.Tensor:
    """Codes of fp32 groups `v` [..., G] on the symmetric grid with scales `s` [..., 1]."""
    safe = torch.where(s > 0, s, torch.ones_like(s))
    q = torch.floor(v / safe + levels / 2).clamp_(0, levels - 1)
    return torch.where(s > 0, q, torch.full_like(q, levels // 2)).to(torch.uint8)


def dequantize_sym(q: torch.Tensor, s: torch.Tensor, levels: int) -> torch.Tensor:
    return (q.to(torch.float32) - (levels - 1) / 2) * s


def choose_qparams(x: torch.Tensor, spec: QuantSpec) -> QParams:
    """Scales (and zeros) for fp32 `x` [..., S, D] grouped along the last dim."""
    g = _grouped(x, spec.group_size)
    if not spec.symmetric:
        mn, mx = g.amin(-1), g.amax(-1)
        s = (mx - mn) / (spec.levels - 1)
        sos = _sos(torch.maximum(s, mn.abs()), spec.scale_dtype)
        return QParams(
            store_scale(s, spec.scale_dtype, sos), store_scale(mn, spec.scale_dtype, sos), sos
        )
    s0 = g.abs().amax(-1) / ((spec.levels - 1) / 2)
    sos = _sos(s0, spec.scale_dtype)
    alphas = search_alphas(spec, x.device)
    if alphas.numel() == 1:
        return QParams(store_scale(s0 * alphas[0], spec.scale_dtype, sos), None, sos)
    yq, w = search_fixed_point(g, search_bits(spec))

    def score(i: torch.Tensor | int) -> tuple[torch.Tensor, torch.Tensor]:
        alpha = alphas[i] if isinstance(i, torch.Tensor) else float(alphas[i])
        stored = store_scale(s0 * alpha, spec.scale_dtype, sos)
        s = load_scale(stored, sos)[..., None]
        return search_score(g, yq, w, s, spec.levels), stored

    n, k = alphas.numel(), spec.search_step
    best_sc, best = score(0)
    best_i = torch.zeros_like(s0, dtype=torch.long)
    for i in range(k, n, k):  # coarse (every candidate when k = 1), in order
        sc, stored = score(i)
        win = sc < best_sc  # ties keep the earlier (larger) candidate
        best_sc, best = torch.where(win, sc, best_sc), torch.where(win, stored, best)
        best_i = torch.where(win, i, best_i)
    centre = best_i
    for d in range(1 - k, k) if k > 1 else ():  # fine: the k-1 neighbours on each side
        if d == 0:
            continue
        i = centre + d
        ok = (i >= 0) & (i < n)
        i = i.clamp(0, n - 1)
        sc, stored = score(i)
        win = ok & ((sc < best_sc) | ((sc == best_sc) & (i < best_i)))
        best_sc, best = torch.where(win, sc, best_sc), torch.where(win, stored, best)
        best_i = torch.where(win, i, best_i)
    return QParams(best, None, sos)


def search_bits(spec: QuantSpec) -> int:
    """F of the search's fixed point: |yq| <= 2^F, so a group's sum of G products yq * c
    (|c| <= L-1) stays below 2^24 and is exact in fp32 (F = 16 for INT2, G = 64)."""
    return 24 - (spec.group_size * (spec.levels - 1) - 1).bit_length()


def search_fixed_point(g: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(yq, w): fp32 groups g [..., G] as integers yq = rint(g * w) (fp32), w = 2^(bits - E) per
    group [...] with max|g| < 2^E (E from the exponent bits, at least bits - 126)."""
    amax = g.abs().amax(-1).contiguous()
    e = (((amax.view(torch.int32) >> 23) & 0xFF) - 126).clamp(min=bits - 126)
    w = ((127 + bits - e) << 23).to(torch.int32).view(torch.float32)
    return torch.round(g * w[..., None]), w


def search_score(
    g: torch.Tensor, yq: torch.Tensor, w: torch.Tensor, s: torch.Tensor, levels: int
) -> torch.Tensor:
    """fp64 [...] ranking score of scales s [..., 1] for groups g [..., G]: the squared error of
    the fixed-point groups, minus sum(yq^2). With c = 2q - (L-1) (odd integers) and s' = s*w:
    sum((yq - c s'/2)^2) - sum(yq^2) = s'(s' sum(c^2) - 4 sum(yq c)) / 4. Both sums are of
    integers below 2^24 in fp32 (exact, so any summation order gives the same score), the rest is
    per group in IEEE fp64; the Triton search does the same operations."""
    safe = torch.where(s > 0, s, torch.ones_like(s))  # quantize_sym's levels, kept in fp32
    c = torch.floor(g / safe + levels / 2).clamp_(0, levels - 1)
    c = torch.where(s > 0, c, levels // 2).mul_(2.0).sub_(levels - 1)
    a = (yq * c).sum(-1).to(torch.float64)
    b = (c * c).sum(-1).to(torch.float64)
    sp = (s[..., 0] * w).to(torch.float64)
    return sp * (sp * b - 4.0 * a)


def quantize(x: torch.Tensor, qp: QParams, spec: QuantSpec) -> torch.Tensor:
    """uint8 codes [..., S, D] (unpacked) of fp32 `x` with stored params `qp`."""
    g = _grouped(x, spec.group_size)
    s = load_scale(qp.scales, qp.scale_of_scales)[..., None]
    if spec.symmetric:
        return quantize_sym(g, s, spec.levels).reshape(x.shape)
    assert qp.zeros is not None, "asymmetric params carry zeros"
    z = load_scale(qp.zeros, qp.scale_of_scales)[..., None]
    safe = torch.where(s > 0, s, torch.ones_like(s))
    q = torch.floor((g - z) / safe + 0.5).clamp_(0, spec.levels - 1)
    return q.to(torch.uint8).reshape(x.shape)


def dequantize(q: torch.Tensor, qp: QParams, spec: QuantSpec) -> torch.Tensor:
    """fp32 values [..., S, D] of unpacked codes `q`."""
    g = _grouped(q, spec.group_size)
    s = load_scale(qp.scales, qp.scale_of_scales)[..., None]
    if spec.symmetric:
        return dequantize_sym(g, s, spec.levels).reshape(q.shape)
    assert qp.zeros is not None, "asymmetric params carry zeros"
    z = load_scale(qp.zeros, qp.scale_of_scales)[..., None]
    return (g.to(torch.float32) * s + z).reshape(q.shape)


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack uint8 codes [..., N] into bytes [..., N*bits/8]; code j sits at bits (j%k)*bits of
    byte j//k (k = 8/bits codes per byte, little end first)."""
    if bits == 8:
        return codes.contiguous()
    k = 8 // bits
    if codes.shape[-1] % k:
        raise ValueError(f"pack: last dim {codes.shape[-1]} not a multiple of {k}")
    c = codes.reshape(*codes.shape[:-1], codes.shape[-1] // k, k).to(torch.int32)
    shifts = torch.arange(k, device=codes.device, dtype=torch.int32) * bits
    return (c << shifts).sum(-1).to(torch.uint8)


def unpack(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of `pack`: uint8 bytes [..., M] -> codes [..., M*8/bits]."""
    if bits == 8:
        return packed
    k = 8 // bits
    shifts = torch.arange(k, device=packed.device, dtype=torch.int32) * bits
    c = (packed.to(torch.int32)[..., None] >> shifts) & ((1 << bits) - 1)
    return c.reshape(*packed.shape[:-1], packed.shape[-1] * k).to(torch.uint8)
