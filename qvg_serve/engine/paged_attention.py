"""Attention for a batch of streams over the paged pool, one layer at a time.

Per layer: each stream's history pages are read (bf16 copied, quantized decoded) into a
bounded workspace, keys get RoPE at their positions (the pool caches keys before RoPE), the
chunk's own new K/V follow its history, and all streams go through one attention call:

    workspace [tokens, H, D]:  | s0 history | s0 chunk | s1 history | s1 chunk | ...
    queries   [tokens, H, D]:  | s0 chunk   | s1 chunk | ...
    mask: block diagonal (stream i's queries see only stream i's keys), as
    xformers.ops.fmha.BlockDiagonalMask.from_seqlens(q_seqlens, kv_seqlens)

xformers' memory-efficient attention runs it where its CUDA ops load; elsewhere (CPU, or no
xformers) torch SDPA runs each stream's block (one dense block-diagonal mask would cost
sum(q) x sum(kv) memory). The workspace holds one layer of the batch's KV, never the cache.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

from qvg_serve.engine.kv_pool import KVPool, ReadPlan

Rope = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""rope(x [tokens, H, D], positions int64 [tokens]) -> x rotated (same shape)."""


class StreamChunk(NamedTuple):
    """One stream's part of a batch for one layer."""

    q: torch.Tensor  # [Lq, H, D] queries of the chunk being denoised (before RoPE)
    k: torch.Tensor  # [Lq, H, D] the chunk's own keys (before RoPE)
    v: torch.Tensor  # [Lq, H, D]
    history: ReadPlan  # the stream's committed pages (from KVPool.read_plan)
    history_pos: torch.Tensor  # int64 [history.tokens] token positions of the history
    q_pos: torch.Tensor  # int64 [Lq] token positions of the chunk


def rope_1d(x: torch.Tensor, pos: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Plain rotary embedding over the last dim (pairs (2i, 2i+1)); for tests and tiny models."""
    d = x.shape[-1]
    inv = base ** (-torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d)
    ang = pos.to(torch.float32)[:, None] * inv[None]  # [tokens, D/2]
    cos, sin = ang.cos()[:, None], ang.sin()[:, None]
    xf = x.float().unflatten(-1, (d // 2, 2))
    a, b = xf[..., 0], xf[..., 1]
    return torch.stack((a * cos - b * sin, a * sin + b * cos), -1).flatten(-2).to(x.dtype)


@functools.lru_cache(maxsize=1)
def xformers_ops():
    """xformers.ops when its CUDA attention loads, else None (CPU builds have none)."""
    try:
        import xformers.ops as xops

        if not torch.cuda.is_available():
            return None
        return xops
    except Exception:  # any import failure means: use SDPA
        return None


class Workspace:
    """A preallocated per-layer KV buffer of `max_tokens` tokens (reused by every layer)."""

    def __init__(self, max_tokens: int, heads: int, head_dim: int, device, dtype=torch.bfloat16):
        self.kv = torch.empty(2, max_tokens, heads, head_dim, dtype=dtype, device=device)

    @property
    def max_tokens(self) -> int:
        return self.kv.shape[1]


def batch_attention(
    pool: KVPool,
    layer: int,
    chunks: Sequence[StreamChunk],
    ws: Workspace,
    rope: Rope | None = rope_1d,
    use_xformers: bool | None = None,
) -> torch.Tensor:
    """Outputs [sum Lq, H, D] for every stream's chunk, in batch order."""
    kv_lens = [c.history.tokens + c.q.shape[0] for c in chunks]
    if sum(kv_lens) > ws.max_tokens:
        raise ValueError(
            f"batch needs {sum(kv_lens)} KV tokens; the workspace holds "
            f"{ws.max_tokens} (raise max_batch_kv_tokens or batch fewer streams)"
        )
    qs, start = [], 0
    for c, n in zip(chunks, kv_lens, strict=True):
        _fill(pool, layer, c, ws.kv[:, start : start + n], rope)
        qs.append(c.q if rope is None else rope(c.q, c.q_pos))
        start += n
    q = torch.cat(qs)
    xops = xformers_ops() if use_xformers is not False else None
    if xops is not None and q.is_cuda:
        mask = xops.fmha.BlockDiagonalMask.from_seqlens([c.q.shape[0] for c in chunks], kv_lens)
        kv = ws.kv[:, :start].to(q.dtype)
        return xops.memory_efficient_attention(q[None], kv[0][None], kv[1][None], attn_bias=mask)[0]
    return _sdpa_blocks(q, ws.kv, [c.q.shape[0] for c in chunks], kv_lens)


def _fill(pool: KVPool, layer: int, c: StreamChunk, dst: torch.Tensor, rope: Rope | None) -> None:
    """Write one stream's [history | chunk] K/V (keys with RoPE) into dst [2, n, H, D]."""
    hist = c.history.tokens
    if hist:
        if dst.dtype == torch.bfloat16:  # the pool's dtype: decode straight into the workspace
            pool.read_layer(c.history, layer, out=dst[:, :hist].transpose(1, 2))
        else:  # e.g. an fp32 CPU workspace: bf16 values first, as the pool stores them
            dst[:, :hist].copy_(pool.read_layer(c.history, layer).transpose(1, 2))
        if rope is not None:
            dst[0, :hist] = rope(dst[0, :hist], c.history_pos)
    k_new = c.k if rope is None else rope(c.k, c.q_pos)
    dst[0, hist:].copy_(k_new)
    dst[1, hist:].copy_(c.v)


def _sdpa_blocks(q: torch.Tensor, kv: torch.Tensor, q_lens, kv_lens) -> torch.Tensor:
    outs, qs, ks = [], 0, 0
    for lq, lk in zip(q_lens, kv_lens, strict=True):
        qi = q[qs : qs + lq].transpose(0, 1)[None]  # [1, H, Lq, D]
        ki = kv[0, ks : ks + lk].transpose(0, 1)[None].to(q.dtype)
        vi = kv[1, ks : ks + lk].transpose(0, 1)[None].to(q.dtype)
        outs.append(F.scaled_dot_product_attention(qi, ki, vi)[0].transpose(0, 1))
        qs, ks = qs + lq, ks + lk
    return torch.cat(outs)
