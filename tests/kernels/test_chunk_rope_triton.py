"""The fused chunk pass (RoPE on q and k, k and v into their rows) equals its torch reference
and the model's own RoPE (WanRope, rope_1d), through the Triton interpreter on CPU (the `gpu`
lane on CUDA), for Wan's 3D RoPE and plain 1D RoPE, strided inputs (views of a fused qkv
projection), odd token and head counts and every launch shape."""

from __future__ import annotations

import pytest
import torch
from conftest import tol

from kernels.chunk_rope_triton import chunk_angles, chunk_qkv, chunk_qkv_ref
from kernels.paged_read_ref import AxialRope
from qvg_serve.engine.paged_attention import rope_1d
from qvg_serve.models.wan_blocks import WanRope


def _case(n, h, d, rope, device="cpu", fused=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    if fused:  # q, k, v as views of one [N, 3, H, D] projection: token stride 3 * H * D
        qkv = torch.randn(n, 3, h, d, generator=g).bfloat16().to(device)
        q, k, v = qkv.unbind(1)
    else:
        q, k, v = (torch.randn(n, h, d, generator=g).bfloat16().to(device) for _ in "qkv")
    pos = torch.randint(0, 7 * 400, (n,), generator=g).to(device)
    rows = torch.randperm(n + 9, generator=g)[:n].to(device)
    return q, k, v, pos, rows, rope


@pytest.mark.parametrize(
    "n,h,d,model_rope,fused,launch",
    [
        (37, 3, 24, WanRope(24, (5, 7)), False, (16, 4, 4)),
        (37, 3, 24, WanRope(24, (5, 7)), True, (8, 2, 2)),
        (20, 5, 16, rope_1d, True, (16, 1, 4)),
        (3, 2, 128, WanRope(128, (30, 52)), False, (16, 4, 4)),
    ],
)
def test_chunk_qkv_equals_reference_and_the_models_rope(n, h, d, model_rope, fused, launch):
    """model_rope: the model's own RoPE (WanRope's forward, or rope_1d), written apart from
    AxialRope: the oracle for what the reference computes."""
    rope = model_rope.axial() if isinstance(model_rope, WanRope) else AxialRope.one_d(d)
    q, k, v, pos, rows, rope = _case(n, h, d, rope, fused=fused)
    cos, sin = chunk_angles(rope, pos)
    m = n + 9
    ko, vo = (torch.full((m, h, d), float("nan")).bfloat16() for _ in "kv")
    kr, vr = ko.clone(), vo.clone()
    qo = chunk_qkv(q, k, v, ko, vo, rows, cos, sin, launch=launch)
    qr = chunk_qkv_ref(q, k, v, kr, vr, rows, cos, sin)
    torch.testing.assert_close(qo, qr, **tol("bf16"))
    torch.testing.assert_close(ko[rows], kr[rows], **tol("bf16"))
    assert torch.equal(vo[rows], v)  # a copy: bit for bit
    # the reference is the model's RoPE
    torch.testing.assert_close(qr, model_rope(q.float(), pos).bfloat16(), **tol("bf16"))
    torch.testing.assert_close(kr[rows], model_rope(k.float(), pos).bfloat16(), **tol("bf16"))
    rest = torch.ones(m, dtype=torch.bool)
    rest[rows] = False
    assert torch.isnan(ko[rest].float()).all() and torch.isnan(vo[rest].float()).all()


def test_chunk_qkv_refuses_bad_shapes():
    q, k, v, pos, rows, rope = _case(5, 2, 8, AxialRope.one_d(8))
    cos, sin = chunk_angles(rope, pos)
    out = torch.empty(9, 2, 8).bfloat16()
    with pytest.raises(ValueError, match="k_out must be a contiguous"):
        chunk_qkv(q, k, v, out[:, :, :4], out, rows, cos, sin)
    with pytest.raises(ValueError, match="cos/sin need"):
        chunk_qkv(q, k, v, out, out.clone(), rows, cos[:4], sin[:4])
    with pytest.raises(ValueError, match="chunk_qkv: q"):
        chunk_qkv(q, k[:4], v, out, out.clone(), rows, cos, sin)


@pytest.mark.gpu
def test_chunk_qkv_on_cuda_at_wan_shapes():
    rope = WanRope(128, (30, 52)).axial()
    q, k, v, pos, rows, rope = _case(4680, 12, 128, rope, device="cuda", fused=True)
    cos, sin = chunk_angles(rope, pos)
    m = 4680 + 9
    ko, vo = (torch.zeros(m, 12, 128, device="cuda").bfloat16() for _ in "kv")
    kr, vr = ko.clone(), vo.clone()
    qo = chunk_qkv(q, k, v, ko, vo, rows, cos, sin)
    qr = chunk_qkv_ref(q, k, v, kr, vr, rows, cos, sin)
    torch.testing.assert_close(qo, qr, **tol("bf16"))
    torch.testing.assert_close(ko, kr, **tol("bf16"))
    assert torch.equal(vo, vr)
