"""The public codec entry points: input checks and backend selection."""

from __future__ import annotations

import pytest
import torch

from kernels import codec


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (torch.zeros(2, 3, 64), r"\[B, H, S, D\]"),
        (torch.zeros(1, 1, 4, 64, dtype=torch.int32), "floating point"),
        (torch.zeros(1, 1, 0, 64), "no tokens"),
    ],
)
def test_bad_inputs(x, match):
    with pytest.raises(ValueError, match=match):
        codec.encode(x, "qvg-int2")


def test_head_dim_must_fit_group():
    with pytest.raises(ValueError, match="group_size"):
        codec.encode(torch.zeros(1, 1, 4, 48), "qvg-int2")


def test_bad_role_and_backend():
    x = torch.zeros(1, 1, 4, 64)
    with pytest.raises(ValueError, match="role"):
        codec.encode(x, "qvg-int2", role="q")
    with pytest.raises(ValueError, match="backend"):
        codec.encode(x, "qvg-int2", backend="cuda")


def test_bf16_input_accepted():
    x = torch.randn(1, 2, 20, 64).to(torch.bfloat16)
    enc = codec.encode(x, "qvg-int4")
    assert codec.decode(enc).dtype == torch.bfloat16


OUT_CASES = [(n, "reference") for n in ("bf16", "fp8", "rtn-int2", "kivi-int2", "quarot-int4")]
OUT_CASES += [(n, b) for n in ("qvg-int2", "qvg-int4") for b in ("reference", "triton")]


@pytest.mark.parametrize("role", ["k", "v"])
@pytest.mark.parametrize(("name", "backend"), OUT_CASES)
def test_decode_into_out_is_bit_exact_and_returns_out(name, backend, role):
    x = torch.randn(1, 2, 37, 64, generator=torch.Generator().manual_seed(1))
    enc = codec.encode(x, name, role=role, backend=backend)
    want = codec.decode(enc, backend=backend)
    ws = torch.full((1, 3, 50, 64), 7.0, dtype=torch.bfloat16)  # [B, H+1, S_total, D]
    view = ws[:, 1:, 5:42]  # strided in H and S, as a paged workspace slice
    got = codec.decode(enc, out=view, backend=backend)
    assert got is view
    assert torch.equal(view, want)
    ws[:, 1:, 5:42] = 7.0
    assert bool((ws == 7.0).all())  # nothing outside the view was written
    f32 = torch.empty(1, 2, 37, 64)
    assert codec.decode(enc, out=f32, backend=backend) is f32
    assert torch.equal(f32, codec.decode(enc, out_dtype=torch.float32, backend=backend))


@pytest.mark.parametrize(
    ("out", "kw", "match"),
    [
        (torch.empty(1, 2, 36, 64, dtype=torch.bfloat16), {}, "shape"),
        (torch.empty(1, 2, 37, 64), {"out_dtype": torch.bfloat16}, "out_dtype"),
        (torch.empty(1, 2, 37, 64, dtype=torch.int16), {}, "floating point"),
        (torch.empty(1, 2, 64, 37, dtype=torch.bfloat16).transpose(2, 3), {}, "unit stride"),
        (torch.empty(1, 2, 37, 64, dtype=torch.bfloat16, device="meta"), {}, "on meta"),
    ],
)
def test_decode_rejects_bad_out(out, kw, match):
    enc = codec.encode(torch.randn(1, 2, 37, 64), "qvg-int2")
    with pytest.raises(ValueError, match=match):
        codec.decode(enc, out=out, **kw)
