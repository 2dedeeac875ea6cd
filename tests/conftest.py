"""Shared test settings.

TOLERANCES is the one table of float tolerances (atol, rtol) with the reason per dtype. Integer
codes are always compared bit-exactly and never appear here.
"""

from __future__ import annotations

import os

# Triton kernels run on the CPU through the interpreter; set before triton is imported.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

TOLERANCES: dict[str, tuple[float, float]] = {
    # fp32 vs fp32 with a different summation order (tl.dot vs torch.matmul, blocked sums):
    # a few ulps of the largest partial sum.
    "fp32": (1e-5, 1e-5),
    # bf16 outputs: 8 mantissa bits, one rounding of each output (2^-8 relative), plus the
    # fp32 difference above.
    "bf16": (1e-2, 1e-2),
    # fp16 outputs: 11 mantissa bits.
    "fp16": (1e-3, 1e-3),
}


def tol(dtype_name: str) -> dict[str, float]:
    """Keyword arguments for torch.testing.assert_close for outputs of `dtype_name`."""
    atol, rtol = TOLERANCES[dtype_name]
    return {"atol": atol, "rtol": rtol}


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="gpu lane: needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
