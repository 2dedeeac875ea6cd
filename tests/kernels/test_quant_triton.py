"""Fused subtract + rotate + scale search + quantize + pack kernel against groupquant_ref."""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl
from conftest import tol

from kernels import groupquant_ref as gq
from kernels import quant_triton as qt
from kernels import scale_triton as st
from kernels.hadamard import rotate_groups
from kernels.spec import QuantSpec, ScaleDtype


def _stage(r=2, s=37, d=64, c=8, seed=0):
    """x [R, S, D] fp32, one stage of bf16 centroids [1, R, C, D] and uint8 ids [1, R, S]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(r, s, d, generator=g) * 2
    cent = (torch.randn(1, r, c, d, generator=g) * 2).to(torch.bfloat16)
    ids = torch.randint(0, c, (1, r, s), generator=g).to(torch.uint8)
    return x, cent, ids


def _reference(x, cent, ids, spec):
    """(codes, QParams) of qvg_ref's residual path on the same stage."""
    r = x.float()
    for t in range(0 if cent is None else cent.shape[0]):
        idx = ids[t].long()[..., None].expand(-1, -1, x.shape[-1])
        r = r - torch.gather(cent[t].float(), 1, idx)
    y = rotate_groups(r, spec.group_size) if spec.rotate else r
    qp = gq.choose_qparams(y, spec)
    return gq.pack(gq.quantize(y, qp, spec), spec.bits), qp


def _rel_err(codes, scales, zeros, sos, target, spec):
    qp = gq.QParams(scales, zeros, sos)
    y = gq.dequantize(gq.unpack(codes, spec.bits), qp, spec)
    return float((y - target).square().sum() / target.square().sum().clamp(min=1e-30))


SPECS = {
    "int2-plain": QuantSpec(rotate=False, scale_search=False),
    "int2-search": QuantSpec(rotate=False),
    "int2-rot-search": QuantSpec(),  # qvg-int2
    "int4-rot-search": QuantSpec(bits=4),  # qvg-int4
    "int2-g16-pro": QuantSpec(group_size=16, search_grid=4),  # qvg-pro-int2, shorter search
    "int8-plain": QuantSpec(bits=8, rotate=False, scale_search=False),
    "int4-asym": QuantSpec(bits=4, symmetric=False, scale_search=False, rotate=False),
    "int2-asym-rot": QuantSpec(symmetric=False, scale_search=False),
    "int2-fp16": QuantSpec(scale_dtype=ScaleDtype.FP16, rotate=False, search_grid=4),
    "int2-bf16-g32": QuantSpec(group_size=32, scale_dtype=ScaleDtype.BF16, search_grid=4),
    "int2-coarse": QuantSpec(rotate=False, search_step=4),  # coarse-to-fine: 10 of 16 tried
    "int4-search": QuantSpec(bits=4, rotate=False, search_grid=4),  # 15 thresholds per level
}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_quantize_matches_reference(name):
    spec = SPECS[name]
    x, cent, ids = _stage()
    got = qt.quantize(x, cent, ids, spec)
    codes, qp = _reference(x, cent, ids, spec)
    assert got.codes.dtype == torch.uint8 and got.codes.shape == codes.shape
    assert got.scales.dtype == qp.scales.dtype and got.scales.shape == qp.scales.shape
    if qp.scale_of_scales is not None:
        assert torch.equal(got.scale_of_scales, qp.scale_of_scales)
    if qp.zeros is not None:
        assert torch.equal(got.zeros.float(), qp.zeros.float())
    if not spec.rotate:  # identical fp32 math (IEEE division, same candidates): bit-exact
        assert torch.equal(got.codes, codes)
        assert torch.equal(got.scales.float(), qp.scales.float())
        return
    # Rotated: tl.dot and torch.matmul sum the G products in different orders, so a value within
    # an ulp of a decision boundary may take the neighbouring code (or a group the next scale
    # candidate). Allow 0.5% of code bytes to differ, and require the same error within 1%.
    assert (got.codes != codes).float().mean() <= 0.005
    r = x - torch.gather(cent[0].float(), 1, ids[0].long()[..., None].expand(-1, -1, 64))
    target = rotate_groups(r, spec.group_size)
    mine = _rel_err(got.codes, got.scales, got.zeros, got.scale_of_scales, target, spec)
    ref = _rel_err(codes, qp.scales, qp.zeros, qp.scale_of_scales, target, spec)
    assert mine <= 1.01 * ref


@pytest.mark.parametrize(
    "case", ["zeros", "constant", "one-token", "huge", "tiny", "no-stages", "d128-s100"]
)
def test_quantize_edge_cases_bit_exact(case):
    spec = QuantSpec(rotate=False)
    x, cent, ids = _stage(r=1, s=100 if case == "d128-s100" else 5, d=128 if "d128" in case else 64)
    if case in ("zeros", "constant"):  # residual exactly 0 (or 0.25) after the stage
        idx = ids[0].long()[..., None].expand(-1, -1, x.shape[-1])
        x = torch.gather(cent[0].float(), 1, idx) + (0.0 if case == "zeros" else 0.25)
    if case == "one-token":
        x, ids = x[:, :1], ids[:, :, :1]
    if case == "huge":
        x = x * 1e18  # squared errors stay finite (1e36 * 64 < fp32 max)
    if case == "tiny":
        x, cent = x * 1e-30, None
    if case == "no-stages":
        cent = None
    got = qt.quantize(x, cent, ids, spec)
    codes, qp = _reference(x, cent, ids, spec)
    assert torch.equal(got.codes, codes)
    assert torch.equal(got.scales.float(), qp.scales.float())
    assert torch.equal(got.scale_of_scales, qp.scale_of_scales)
    if case == "zeros":  # zero scale -> the middle code 2 everywhere (0b10101010 per byte)
        assert bool((got.codes == 0xAA).all()) and torch.equal(got.scale_of_scales, torch.ones(1))


@triton.jit
def _round_kernel(x_ptr, y_ptr, N: tl.constexpr, MANT: tl.constexpr, EMIN: tl.constexpr):
    offs = tl.arange(0, N)
    tl.store(y_ptr + offs, st.round_to(tl.load(x_ptr + offs), MANT, EMIN))


@pytest.mark.parametrize("dtype", [ScaleDtype.FP8, ScaleDtype.FP16, ScaleDtype.BF16])
def test_round_to_matches_torch_cast(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1024, generator=g) * torch.logspace(-6, 2, 1024)
    if dtype is ScaleDtype.FP8:  # include every e4m3 value (ties and subnormals) and midpoints
        allv = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
        allv = allv[allv.isfinite()].sort().values
        x = torch.cat([x.clamp(-448, 448), allv, (allv[1:] + allv[:-1]) / 2])
        x = torch.cat([x, torch.zeros(2048 - x.numel())])
    y = torch.empty_like(x)
    mant, emin = st.FORMAT[dtype]
    _round_kernel[(1,)](x, y, N=x.numel(), MANT=mant, EMIN=emin)
    assert torch.equal(y, x.to(dtype.torch_dtype).float())


@pytest.mark.parametrize("levels", [4, 16])
def test_level_bounds_count_equals_ieee_division(levels):
    """Counting y >= T_k (T_k the smallest fp32 with y/s >= M_k, as scale_triton._threshold)
    gives quantize_sym's level, also for y within 3 ulps of every boundary, at any scale."""
    g = torch.Generator().manual_seed(levels)
    b = st.level_bounds(levels)
    n = 50_000
    s = (torch.rand(n, generator=g) + 0.01) * torch.logspace(-20, 20, n)[torch.randperm(n)]
    k = torch.randint(1, levels, (n,), generator=g)
    edge = (b[0][k - 1] * s.double()).float().view(torch.int32)
    edge = edge + torch.randint(-3, 4, (n,), generator=g, dtype=torch.int32)
    y = torch.cat([edge.view(torch.float32), torch.randn(n, generator=g) * s * levels / 2])
    s = torch.cat([s, s])
    p = b[0][None, :] * s.double()[:, None]  # exact
    t = p.float()
    low = (t.double() < p) | ((b[1][None, :] != 0) & (t.double() == p))
    bits = t.view(torch.int32)
    up = torch.where(t > 0, bits + 1, torch.where(t < 0, bits - 1, torch.ones_like(bits)))
    thr = torch.where(low, up.view(torch.float32), t)
    count = (y[:, None] >= thr).sum(1)
    assert torch.equal(count, gq.quantize_sym(y[:, None], s[:, None], levels)[:, 0].long())


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["int2-rot-search", "int2-plain"])
def test_quantize_full_size_gpu(name):
    spec = SPECS[name]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 37440, 128, generator=g).cuda()
    cent = (torch.randn(1, 12, 256, 128, generator=g) * 0.5).to(torch.bfloat16).cuda()
    ids = torch.randint(0, 256, (1, 12, 37440), generator=g).to(torch.uint8).cuda()
    got = qt.quantize(x, cent, ids, spec)
    codes, qp = _reference(x, cent, ids, spec)
    assert (got.codes != codes).float().mean() <= 0.005
    torch.testing.assert_close(got.scale_of_scales, qp.scale_of_scales, **tol("fp32"))


@pytest.mark.parametrize("name", ["int2-search", "int2-rot-search", "int2-fp16"])
def test_quantize_fast_search_equals_exact_and_is_config_independent(name):
    """Levels by thresholds pick the same scales and codes as by IEEE division (exact=True),
    and codes do not depend on block size / warps (integer score sums)."""
    spec = SPECS[name]
    x, cent, ids = _stage(r=2, s=70, seed=3)
    x[0, :3] = 0.0  # exact zeros and a tiny group exercise the flags
    x[1, 5] *= 1e-12
    want = qt.quantize(x, cent, ids, spec, exact=True)
    for bs, nw in ((64, 8), (16, 2), (32, 4)):
        got = qt.quantize(x, cent, ids, spec, block_s=bs, num_warps=nw, exact=False)
        assert torch.equal(got.codes, want.codes)
        assert torch.equal(got.scales.float(), want.scales.float())


@pytest.mark.parametrize("name", ["int2-rot-search", "int4-rot-search", "int2-g16-pro"])
def test_split_rotation_equals_fma_rotation(name):
    """The tensor-core rotation's split y = y1 + y2 + y3 (three bf16 parts, times the +-1
    matrix) loses nothing: with its dots run in fp32 (split_rot=2, as the interpreter must),
    codes and scales equal the FMA dot's. The bf16 tensor-core dots are the gpu lane's."""
    spec = SPECS[name]
    x, cent, ids = _stage(r=2, s=70, seed=5)
    x[1, 3] *= 1e-20  # tiny residuals split into parts far below the first
    want = qt.quantize(x, cent, ids, spec, split_rot=False)
    got = qt.quantize(x, cent, ids, spec, split_rot=2)
    assert (got.codes != want.codes).float().mean() <= 0.001
    torch.testing.assert_close(got.scales.float(), want.scales.float(), rtol=0, atol=0)
    torch.testing.assert_close(got.scale_of_scales, want.scale_of_scales, rtol=1e-6, atol=0)


@pytest.mark.parametrize("name", ["int2-search", "int2-rot-search", "int2-g16-pro", "int2-fp16"])
def test_pair_scores_equal_the_full_count(name):
    """INT2's outer-threshold scores (pair_score) rank like the three-threshold count: same
    codes and scales, bit for bit, including values in the middle threshold's ambiguous zone
    just below zero, exact zeros, -0.0 and tiny groups."""
    spec = SPECS[name]
    x, cent, ids = _stage(r=2, s=70, seed=7)
    idx = ids[0].long()[..., None].expand(-1, -1, x.shape[-1])
    base = torch.gather(cent[0].float(), 1, idx)
    x[0, :4] = base[0, :4]  # residual exactly 0
    x[0, 4:8] = base[0, 4:8] - 1e-9 * base[0, 4:8].abs().amax()  # just below 0, after the stage
    x[1, 2] = base[1, 2] - 0.0  # -0.0 where the centroid is 0 are kept by the subtraction
    x[1, 5] = base[1, 5] + 1e-30
    x[1, 9:12] = base[1, 9:12] + torch.randn(3, x.shape[-1]) * 1e-7
    want = qt.quantize(x, cent, ids, spec, exact=False, pair_score=False)
    got = qt.quantize(x, cent, ids, spec, exact=False, pair_score=True)
    assert torch.equal(got.codes, want.codes)
    assert torch.equal(got.scales.float(), want.scales.float())
    if not spec.rotate:
        codes, qp = _reference(x, cent, ids, spec)
        assert torch.equal(got.codes, codes)


def test_pair_scores_in_the_middle_thresholds_ambiguous_zone():
    """Values in [T2(s), 0) (|y| <= 2^-23 s: the middle threshold sits just below zero) are where
    [y >= 0] and the exact count disagree; their fixed-point yq is 0, so scores still agree."""
    spec = SPECS["int2-search"]
    g = torch.Generator().manual_seed(11)
    x = torch.randn(1, 64, 64, generator=g)
    amax = x.abs().amax(-1, keepdim=True)
    for j, f in enumerate((2.0**-24, 2.0**-25, 2.0**-26, 2.0**-30, 0.0)):
        x[0, 10 * j : 10 * j + 10, 7] = -f * amax[0, 10 * j : 10 * j + 10, 0]
    x[0, 60:, 5] = -0.0
    want = qt.quantize(x, None, None, spec, exact=False, pair_score=False)
    got = qt.quantize(x, None, None, spec, exact=False, pair_score=True)
    codes, qp = _reference(x, None, None, spec)
    assert torch.equal(want.codes, codes)
    assert torch.equal(got.codes, codes) and torch.equal(got.scales.float(), qp.scales.float())
