"""Group quantization reference: grids, scale search, fp8 two-level scales, packing."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from kernels import groupquant_ref as gq
from kernels.spec import QuantSpec, ScaleDtype


def _roundtrip(x: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    qp = gq.choose_qparams(x, spec)
    q = gq.quantize(x, qp, spec)
    return q, gq.dequantize(q, qp, spec)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_pack_unpack_bit_exact(bits):
    g = torch.Generator().manual_seed(bits)
    codes = torch.randint(0, 1 << bits, (3, 5, 64), generator=g, dtype=torch.uint8)
    packed = gq.pack(codes, bits)
    assert packed.shape[-1] == 64 * bits // 8
    assert torch.equal(gq.unpack(packed, bits), codes)


def test_pack_layout_little_end_first():
    codes = torch.tensor([[1, 2, 3, 0]], dtype=torch.uint8)
    # code j at bits 2j: 1 | 2<<2 | 3<<4 | 0<<6 = 1 + 8 + 48 = 57
    assert gq.pack(codes, 2).tolist() == [[57]]


def test_pack_rejects_partial_byte():
    with pytest.raises(ValueError, match="multiple of 4"):
        gq.pack(torch.zeros(1, 6, dtype=torch.uint8), 2)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits", [2, 4])
def test_all_levels_used(bits, symmetric):
    """The official QVG's absmax INT2 grid uses 3 of 4 codes; ours uses every level."""
    x = torch.randn(1, 2000, 64, generator=torch.Generator().manual_seed(0))
    spec = QuantSpec(
        bits=bits, group_size=64, symmetric=symmetric, scale_search=False, rotate=False
    )
    q, _ = _roundtrip(x, spec)
    assert torch.unique(q).numel() == 1 << bits


@pytest.mark.parametrize("scale_dtype", list(ScaleDtype))
def test_roundtrip_error_bounded_per_element(scale_dtype):
    """Without search, every element lies within half a step of its level (plus the stored
    scale's rounding: the fp8 scale is rounded, so we bound by the stored scale)."""
    x = torch.randn(2, 3, 77, 64, generator=torch.Generator().manual_seed(1)) * 3
    spec = QuantSpec(
        bits=4, group_size=32, scale_dtype=scale_dtype, scale_search=False, rotate=False
    )
    qp = gq.choose_qparams(x, spec)
    q = gq.quantize(x, qp, spec)
    xh = gq.dequantize(q, qp, spec)
    step = gq.load_scale(qp.scales, qp.scale_of_scales).repeat_interleave(32, -1)
    # Rounding the scale down can push the largest values past the top level: allow the
    # clamp overshoot that rounding (<= 2^-3 relative for e4m3) creates.
    overshoot = x.abs() * (2**-3 if scale_dtype is ScaleDtype.FP8 else 2**-7)
    assert bool(((x - xh).abs() <= step / 2 + overshoot + 1e-6).all())


def test_scale_search_never_worse_than_absmax():
    x = torch.randn(4, 300, 64, generator=torch.Generator().manual_seed(2))
    x[..., 3] *= 8  # an outlier channel: absmax wastes levels on it
    plain = QuantSpec(bits=2, group_size=64, scale_search=False, rotate=False)
    search = QuantSpec(bits=2, group_size=64, scale_search=True, rotate=False)
    e_plain = (x - _roundtrip(x, plain)[1]).square().reshape(-1, 64).sum(-1)
    e_search = (x - _roundtrip(x, search)[1]).square().reshape(-1, 64).sum(-1)
    assert bool((e_search <= e_plain + 1e-5).all())
    assert e_search.sum() < 0.8 * e_plain.sum()


def _candidate_scores(x, spec):
    """fp64 [n_groups, n_candidates] search scores of every candidate, and each one computed
    directly as the fixed-point squared error minus sum(yq^2)."""
    g = x.reshape(1, -1, 1, spec.group_size)
    yq, w = gq.search_fixed_point(g, gq.search_bits(spec))
    s0 = g.abs().amax(-1) / ((spec.levels - 1) / 2)
    sos = gq._sos(s0, spec.scale_dtype)
    scores, direct = [], []
    for a in gq.search_alphas(spec).tolist():
        s = gq.load_scale(gq.store_scale(s0 * a, spec.scale_dtype, sos), sos)[..., None]
        scores.append(gq.search_score(g, yq, w, s, spec.levels))
        c = gq.quantize_sym(g, s, spec.levels).double() - (spec.levels - 1) / 2
        yd, sp = yq.double(), (s * w[..., None]).double()
        direct.append((yd - c * sp).square().sum(-1) - yd.square().sum(-1))
    return torch.stack(scores, -1).reshape(-1, len(scores)), torch.stack(direct, -1).reshape(
        -1, len(scores)
    )


@pytest.mark.parametrize("bits", [2, 4])
def test_search_score_is_the_fixed_point_error_and_the_pick_is_least(bits):
    spec = QuantSpec(bits=bits, group_size=64, rotate=False)
    x = torch.randn(1, 200, 64, generator=torch.Generator().manual_seed(4))
    x[..., 5] *= 6
    scores, direct = _candidate_scores(x, spec)
    torch.testing.assert_close(scores / 4, direct, rtol=1e-12, atol=1e-6)
    yq, _ = gq.search_fixed_point(x.reshape(-1, 64), gq.search_bits(spec))
    assert float(yq.abs().max()) <= 2 ** gq.search_bits(spec)  # sums of yq * c stay < 2^24
    picked = gq.choose_qparams(x, spec).scales.reshape(-1).float()
    best = scores.argmin(-1)  # first minimum, as the search's tie rule
    s0 = x.reshape(-1, 64).abs().amax(-1) / ((spec.levels - 1) / 2)
    sos = gq._sos(s0.reshape(1, -1, 1), spec.scale_dtype)
    want = gq.store_scale(s0.reshape(1, -1, 1) * gq.search_alphas(spec)[best].reshape(1, -1, 1),
                          spec.scale_dtype, sos)  # fmt: skip
    assert torch.equal(picked, want.reshape(-1).float())


def test_coarse_to_fine_search_tries_the_neighbours_of_the_coarse_best():
    """search_step=4: the pick is the least score among 0, 4, 8, 12 and the 3 on each side of
    the best of those; never better than the full search."""
    x = torch.randn(1, 300, 64, generator=torch.Generator().manual_seed(5))
    full = QuantSpec(rotate=False)
    scores, _ = _candidate_scores(x, full)
    coarse_best = scores[:, ::4].argmin(-1) * 4
    idx = torch.arange(16)[None, :]
    near = (idx - coarse_best[:, None]).abs() <= 3
    want = torch.where(near, scores, torch.inf).argmin(-1)
    got_sc = gq.choose_qparams(x, replace(full, search_step=4)).scales.reshape(-1).float()
    alphas = gq.search_alphas(full)
    s0 = x.reshape(-1, 64).abs().amax(-1) / 1.5
    sos = gq._sos(s0.reshape(1, -1, 1), full.scale_dtype)
    want_sc = gq.store_scale((s0 * alphas[want]).reshape(1, -1, 1), full.scale_dtype, sos)
    assert torch.equal(got_sc, want_sc.reshape(-1).float())
    assert bool((scores.gather(1, want[:, None]) >= scores.min(-1, keepdim=True).values).all())
    assert int((want != scores.argmin(-1)).sum()) < 0.2 * len(want)  # mostly the same pick


def test_all_zeros_and_constant_groups():
    spec = QuantSpec(bits=2, group_size=16)
    zeros = torch.zeros(1, 5, 32)
    q, xh = _roundtrip(zeros, spec)
    assert torch.equal(xh, zeros)
    const = torch.full((1, 5, 32), 2.5)
    _, xh = _roundtrip(const, spec)
    # a constant group sits on a level (+-1.5 s): reconstructed within fp8 scale rounding
    torch.testing.assert_close(xh, const, atol=0.0, rtol=2**-3)


def test_huge_values_keep_relative_precision():
    """fp8 scales alone overflow at 448; the per-row scale-of-scales keeps huge inputs exact."""
    x = torch.randn(1, 50, 64, generator=torch.Generator().manual_seed(3)) * 1e6
    spec = QuantSpec(bits=4, group_size=64, scale_search=False, rotate=False)
    _, xh = _roundtrip(x, spec)
    assert torch.isfinite(xh).all()
    rel = (x - xh).square().sum() / x.square().sum()
    assert rel < 0.02


def test_group_must_divide_last_dim():
    with pytest.raises(ValueError, match="multiple of group_size"):
        gq.choose_qparams(torch.zeros(1, 2, 48), QuantSpec(group_size=32))
