"""Orthonormal Hadamard matrices (Sylvester construction) for rotating groups of channels.

H is symmetric and H @ H = I, so the same matrix rotates and un-rotates. A rotation spreads an
outlier channel over the whole group, so per-group scales fit the bulk of the values better.
"""

from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=32)
def _hadamard_cpu(n: int) -> torch.Tensor:
    if n < 1 or n & (n - 1):
        raise ValueError(f"hadamard size {n}: must be a power of two")
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return (h / n**0.5).to(torch.float32)


@functools.lru_cache(maxsize=32)
def _hadamard_on(n: int, device: torch.device) -> torch.Tensor:
    return _hadamard_cpu(n).to(device)


def hadamard(n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """[n, n] fp32 orthonormal, symmetric Hadamard matrix (entries +-1/sqrt(n)); shared per
    (n, device), so do not write into it. Cached on the GPU too: copying it there on every
    call is a host sync in the middle of each encode."""
    return _hadamard_on(n, torch.device(device))


def rotate_groups(x: torch.Tensor, group: int) -> torch.Tensor:
    """Rotate each run of `group` channels of the last dim of fp32 `x` (self-inverse)."""
    shape = x.shape
    h = hadamard(group, x.device)
    return (x.reshape(*shape[:-1], shape[-1] // group, group) @ h).reshape(shape)
