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
