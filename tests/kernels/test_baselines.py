"""Baselines behind the same API: round trips, exact sizes, their defining layouts."""

from __future__ import annotations

import pytest
import torch

from kernels import codec
from kernels.hadamard import hadamard

BASELINES = [
    "bf16",
    "fp8",
    "rtn-int2",
    "rtn-int4",
    "kivi-int2",
    "kivi-int4",
    "quarot-int2",
    "quarot-int4",
]
# Relative MSE each baseline must reach on Gaussian data (what its bit width allows).
MAX_REL_MSE = {
    "bf16": 1e-4,
    "fp8": 2e-3,
    "rtn-int4": 3e-2,
    "kivi-int4": 3e-2,
    "quarot-int4": 3e-2,
    "rtn-int2": 0.6,
    "kivi-int2": 0.6,
    "quarot-int2": 0.6,
}


def _x(s=77, d=64, seed=0):
    return torch.randn(1, 3, s, d, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", BASELINES)
@pytest.mark.parametrize("role", ["k", "v"])
def test_roundtrip_and_exact_size(name, role):
    x = _x()
    enc = codec.encode(x, name, role=role)
    xh = codec.decode(enc, out_dtype=torch.float32)
    assert xh.shape == x.shape
    rel = float((x - xh).square().sum() / x.square().sum())
    assert rel < MAX_REL_MSE[name], rel
    assert enc.nbytes == codec.predict_nbytes(name, tuple(x.shape), role)


def test_kivi_keys_are_grouped_along_tokens():
    """A per-channel offset costs KIVI keys little (each channel has its own min and scale; only
    the fp16 rounding of the min remains), while per-token value groups must span it."""
    x = _x(s=64) * 0.01
    x[..., 5] += 10.0
    k = codec.decode(codec.encode(x, "kivi-int2", role="k"), out_dtype=torch.float32)
    v = codec.decode(codec.encode(x, "kivi-int2", role="v"), out_dtype=torch.float32)
    assert (x - k).square().sum() < 0.1 * (x - v).square().sum()


def test_kivi_partial_token_group_padding_is_counted():
    x = _x(s=33)
    enc = codec.encode(x, "kivi-int2", role="k")
    assert enc.tensors["codes"].shape[-1] == 64 * 2 // 8  # 33 tokens padded to 64
    assert enc.nbytes == codec.predict_nbytes("kivi-int2", tuple(x.shape), "k")


def test_quarot_rotation_is_orthonormal_and_helps_outliers():
    h = hadamard(64)
    torch.testing.assert_close(h @ h, torch.eye(64), atol=1e-6, rtol=0)
    x = _x(s=200)
    x[..., 0] *= 50
    err = {
        n: float((x - codec.decode(codec.encode(x, n), out_dtype=torch.float32)).square().sum())
        for n in ("rtn-int4", "quarot-int4")
    }
    assert err["quarot-int4"] < err["rtn-int4"]


def test_fp8_uses_per_head_scale():
    x = _x()
    x[:, 1] *= 1e4
    enc = codec.encode(x, "fp8")
    assert enc.tensors["scale"].shape == (1, 3)
    xh = codec.decode(enc, out_dtype=torch.float32)
    assert (x[:, 0] - xh[:, 0]).square().sum() / x[:, 0].square().sum() < 2e-3
