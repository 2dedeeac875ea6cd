"""Fused decode kernel (the product path) against qvg_ref.decode / groupquant_ref, including
writes into views. Its measured alternatives are tested in tests/tools/test_decode_variants.py."""

from __future__ import annotations

import pytest
import torch
from conftest import tol

from kernels import decode_triton as dt
from kernels import groupquant_ref as gq
from kernels import qvg_ref
from kernels.hadamard import rotate_groups
from kernels.spec import QuantSpec, ScaleDtype, get_spec


def _x(b=1, h=2, s=37, d=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(b * h, 5, d, generator=g) * 2
    ids = torch.randint(0, 5, (b * h, s), generator=g)
    x = torch.gather(centers, 1, ids[..., None].expand(-1, -1, d))
    return (x + 0.3 * torch.randn(b * h, s, d, generator=g)).reshape(b, h, s, d)


def _encode_ref(name, x, centroids=8):
    return qvg_ref.encode(x, get_spec(name).with_kmeans(centroids=centroids, iters=1))


def _decode(enc, dec=dt.decode, **kw):
    t, ks = enc.tensors, enc.spec.kmeans
    cent = torch.stack([t[f"centroids.{i}"] for i in range(ks.stages)])
    ids = torch.stack([t[f"ids.{i}"] for i in range(ks.stages)])
    return dec(
        t["codes"],
        t["scales"],
        t.get("zeros"),
        t.get("scale_of_scales"),
        cent,
        ids,
        enc.spec.quant,
        **kw,
    )


QVG = ["qvg-int2", "qvg-int4", "qvg-pro-int2", "qvg-int2-plain"]


@pytest.mark.parametrize("name", QVG)
def test_decode_matches_reference(name):
    enc = _encode_ref(name, _x())
    want = qvg_ref.decode(enc, torch.float32)
    got = _decode(enc, out_dtype=torch.float32)
    if enc.spec.quant.rotate:  # exact +-1 dot then one multiply vs the reference's matmul
        torch.testing.assert_close(got, want, **tol("fp32"))
    else:  # identical fp32 operations in the same order
        assert torch.equal(got, want)
    got16 = _decode(enc)
    assert got16.dtype == torch.bfloat16
    torch.testing.assert_close(got16.float(), want, **tol("bf16"))


@pytest.mark.parametrize("s,d", [(1, 64), (100, 128), (5, 256)])
def test_decode_odd_token_counts_and_head_dims(s, d):
    enc = _encode_ref("qvg-int2", _x(s=s, d=d), centroids=16)  # 16 > s for s = 1, 5
    got = _decode(enc, out_dtype=torch.float32, launch=dt.Launch(block_s=16))
    torch.testing.assert_close(got, qvg_ref.decode(enc, torch.float32), **tol("fp32"))


QSPECS = {
    "int8-rot": QuantSpec(bits=8),
    "int4-asym": QuantSpec(bits=4, symmetric=False, scale_search=False, rotate=False),
    "int2-asym-rot": QuantSpec(symmetric=False, scale_search=False),
    "int2-bf16-g16": QuantSpec(group_size=16, scale_dtype=ScaleDtype.BF16, rotate=False),
    "int4-fp16-g32-rot": QuantSpec(bits=4, group_size=32, scale_dtype=ScaleDtype.FP16),
}


def group_quant_case(name):
    """(decode args, want) of a group-quantized [1, 2, 37, 64] tensor without k-means stages."""
    spec = QSPECS[name]
    x = _x().reshape(2, 37, 64)
    y = rotate_groups(x, spec.group_size) if spec.rotate else x
    qp = gq.choose_qparams(y, spec)
    codes = gq.pack(gq.quantize(y, qp, spec), spec.bits)
    want = gq.dequantize(gq.unpack(codes, spec.bits), qp, spec)
    want = rotate_groups(want, spec.group_size) if spec.rotate else want

    def r4(t):
        return None if t is None else t.reshape(1, 2, 37, -1)

    sos = None if qp.scale_of_scales is None else qp.scale_of_scales.reshape(1, 2)
    args = (r4(codes), r4(qp.scales), r4(qp.zeros), sos, None, None, spec)
    return args, want.reshape(1, 2, 37, 64)


@pytest.mark.parametrize("name", sorted(QSPECS))
def test_decode_group_quant_without_stages(name):
    args, want = group_quant_case(name)
    got = dt.decode(*args, out_dtype=torch.float32)
    torch.testing.assert_close(got, want, **tol("fp32"))


def test_decode_into_workspace_view_leaves_the_rest():
    enc = _encode_ref("qvg-int2", _x(b=2, h=2, s=37))
    ws = torch.full((2, 3, 50, 64), 7.0, dtype=torch.bfloat16)  # [B, H+1, S_total, D]
    view = ws[:, 1:, 5:42]  # strided in B, H and S
    out = _decode(enc, out=view, launch=dt.Launch(tma=True))  # tma: contiguous out only
    assert out.data_ptr() == view.data_ptr()
    torch.testing.assert_close(view.float(), qvg_ref.decode(enc, torch.float32), **tol("bf16"))
    rest = ws.clone()
    rest[:, 1:, 5:42] = 7.0
    assert bool((rest == 7.0).all())


def test_decode_rejects_bad_out():
    enc = _encode_ref("qvg-int2", _x())
    with pytest.raises(ValueError, match="unit stride"):
        _decode(enc, out=torch.empty(1, 2, 64, 37).transpose(2, 3))


def test_launch_shape_does_not_change_results():
    enc = _encode_ref("qvg-int4", _x(s=100))
    want = _decode(enc, out_dtype=torch.float32)
    bf16 = _decode(enc)
    assert torch.equal(_decode(enc, launch=dt.Launch(tma=True)), bf16)
    for launch in (
        dt.Launch(block_s=8, waves=0),
        dt.Launch(block_s=64, num_warps=4),
        dt.Launch(block_s=32, tma=True),  # 100 tokens: the last tile's store is clipped
        dt.Launch(block_s=16, tma=True, waves=2),
    ):
        assert torch.equal(_decode(enc, out_dtype=torch.float32, launch=launch), want)
    with pytest.raises(ValueError, match="power of two"):
        dt.Launch(block_s=24)


@pytest.mark.parametrize(
    "bits,group,sym", [(2, 64, True), (2, 16, True), (4, 128, True), (4, 128, False)]
)
def test_fp16_butterflies_equal_fp32_ones(bits, group, sym):
    """Launch.half keeps the butterflies in fp16 at <= 4 bits: exact only if every partial sum
    fits, so the largest codes (all levels at the top, |sum| = G * (L - 1) / 2 or G * (L - 1))
    and random ones must give bit-identical fp32 output either way."""
    qs = QuantSpec(bits=bits, group_size=group, symmetric=sym, scale_search=False,
                   scale_dtype=ScaleDtype.FP16)  # fmt: skip
    b, h, s, d = 1, 2, 40, 128
    gen = torch.Generator().manual_seed(bits * group)
    codes = torch.randint(0, 256, (b, h, s, d * bits // 8), generator=gen, dtype=torch.uint8)
    codes[:, :, :8] = 255  # top level everywhere: the largest sums
    scales = (torch.rand(b, h, s, d // group, generator=gen) + 0.5).half()
    zeros = None if sym else torch.randn(b, h, s, d // group, generator=gen).half()
    args = (codes, scales, zeros, None, None, None, qs)
    got = {
        half: dt.decode(*args, out_dtype=torch.float32, launch=dt.Launch(half=half))
        for half in (True, False)
    }
    assert torch.equal(got[True], got[False])
    assert got[True][:, :, :8].abs().max() > 0


@pytest.mark.gpu
def test_decode_full_size_gpu():
    x = _x(1, 12, 37440, 128).cuda()
    enc = qvg_ref.encode(x, get_spec("qvg-int2").with_kmeans(iters=1))
    want = qvg_ref.decode(enc, torch.float32)
    got = _decode(enc)
    torch.testing.assert_close(got.float(), want, **tol("bf16"))
