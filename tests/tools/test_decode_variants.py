"""The decode alternatives kept for sweeps (tools/decode_variants.py): every un-rotation method
and code-load mode exact against the reference, and equal to the product kernel."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest
import torch

from kernels import decode_triton as dt
from kernels import groupquant_ref as gq
from kernels import qvg_ref
from kernels.hadamard import rotate_groups
from kernels.spec import QuantSpec, ScaleDtype, get_spec
from tools import decode_variants as dv

# tests/conftest.py's tolerance table, by path: `from conftest import` gets whichever conftest
# module was imported last (tests/serving/conftest.py when the whole suite runs).
_spec = importlib.util.spec_from_file_location(
    "root_conftest", pathlib.Path(__file__).parents[1] / "conftest.py"
)
_root = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_root)
tol = _root.tol

# Cases as in tests/kernels/test_decode_triton.py (a test module is not importable from here).
QVG = ["qvg-int2", "qvg-int4", "qvg-pro-int2", "qvg-int2-plain"]


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


@pytest.mark.parametrize("name", QVG)
@pytest.mark.parametrize("join", [False, True])
@pytest.mark.parametrize("rot", dv.ROTS)
def test_variant_matches_reference_and_product(name, join, rot):
    enc = _encode_ref(name, _x())
    want = qvg_ref.decode(enc, torch.float32)
    got = _decode(enc, dv.decode, out_dtype=torch.float32, join=join, rot=rot)
    if enc.spec.quant.rotate:  # exact +-1 transform then one multiply vs the reference's matmul
        torch.testing.assert_close(got, want, **tol("fp32"))
    else:  # identical fp32 operations in the same order
        assert torch.equal(got, want)
    if rot == "fwht" and join:  # the product's path, before it was reduced to one path
        assert torch.equal(got, _decode(enc, out_dtype=torch.float32))
    got16 = _decode(enc, dv.decode, join=join, rot=rot)
    assert got16.dtype == torch.bfloat16
    torch.testing.assert_close(got16.float(), want, **tol("bf16"))


@pytest.mark.parametrize("s,d", [(1, 64), (100, 128), (5, 256)])
@pytest.mark.parametrize("rot", dv.ROTS)
def test_variant_odd_token_counts_and_head_dims(s, d, rot):
    enc = _encode_ref("qvg-int2", _x(s=s, d=d), centroids=16)  # 16 > s for s = 1, 5
    got = _decode(enc, dv.decode, out_dtype=torch.float32, block_s=16, rot=rot)
    torch.testing.assert_close(got, qvg_ref.decode(enc, torch.float32), **tol("fp32"))


@pytest.mark.parametrize("name", sorted(QSPECS))
@pytest.mark.parametrize("join", [False, True])
@pytest.mark.parametrize("rot", dv.ROTS)
def test_variant_group_quant_without_stages(name, join, rot):
    args, want = group_quant_case(name)
    got = dv.decode(*args, out_dtype=torch.float32, join=join, rot=rot)
    torch.testing.assert_close(got, want, **tol("fp32"))
    if rot == "fwht" and join:
        assert torch.equal(got, dt.decode(*args, out_dtype=torch.float32))


@pytest.mark.gpu
@pytest.mark.parametrize("join", [False, True])
@pytest.mark.parametrize("rot", dv.ROTS)
def test_variant_full_size_gpu(join, rot):
    x = _x(1, 12, 37440, 128).cuda()
    enc = qvg_ref.encode(x, get_spec("qvg-int2").with_kmeans(iters=1))
    want = qvg_ref.decode(enc, torch.float32)
    got = _decode(enc, dv.decode, join=join, rot=rot)
    torch.testing.assert_close(got.float(), want, **tol("bf16"))
