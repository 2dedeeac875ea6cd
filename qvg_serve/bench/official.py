"""Adapter for the official Quant VideoGen package (`quant-videogen` 0.1.0 on PyPI), so the codec
benchmark runs it on the same tensors as ours. It needs CUDA (its kernels are Triton-on-GPU).

We call its public Triton PRQ path (`triton_prq_quantize_tensor` / `..._dequantize_tensor`);
nothing of it is vendored. Its stored state is a dict of tensors; every tensor in it counts
toward its bytes (centroids and cluster ids per stage, packed residual codes, scales, zeros).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch


class OfficialPreset(NamedTuple):
    name: str
    stages: int
    centroids: int
    group: int
    bits: int
    iters: int


# The DESIGN.md anchors: INT2 (1 stage, C=256, group 64, 2 k-means iterations) and QVG-Pro
# (4 stages, group 16), both with the package's default fp8 scales.
PRESETS = (
    OfficialPreset("official-qvg-int2", 1, 256, 64, 2, 2),
    OfficialPreset("official-qvg-pro-int2", 4, 256, 16, 2, 2),
)


def available(device: torch.device) -> str | None:
    """None when the official package can run here, else why not."""
    if device.type != "cuda":
        return "the official quant_videogen runs on CUDA only"
    try:
        import quant_videogen  # noqa: F401
    except ImportError as exc:
        return f"quant_videogen is not importable ({exc})"
    return None


def encode(x: torch.Tensor, p: OfficialPreset) -> dict[str, Any]:
    from quant_videogen.functions import triton_prq_quantize_tensor

    return triton_prq_quantize_tensor(
        x.contiguous(),
        num_stages=p.stages,
        num_clusters=p.centroids,
        block_size=p.group,
        max_iters=p.iters,
        quantize_fn=lambda _x: p.bits,
    )


def decode(state: dict[str, Any], p: OfficialPreset) -> torch.Tensor:
    from quant_videogen.functions import triton_prq_dequantize_tensor

    return triton_prq_dequantize_tensor(state, p.group, p.bits, output_dtype=torch.bfloat16)


def nbytes(state: dict[str, Any]) -> int:
    """Every stored tensor's bytes (lists are per stage; None entries are absent fields)."""
    total = 0
    for value in state.values():
        items = value if isinstance(value, (list, tuple)) else [value]
        for t in items:
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total
