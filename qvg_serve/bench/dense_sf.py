"""The yardstick of `bench e2e`: a Self-Forcing-style dense KV cache as an AttentionContext.

What users run today: per layer, post-RoPE keys and values in a preallocated buffer
[streams, capacity, H, D] (bf16), RoPE on the new chunk only, the chunk's k/v written after the
history, one SDPA (flash on CUDA) call per layer for the batch:

    cache.k[layer]: | stream 0: history (post-RoPE) | chunk | free ... |
                    | stream 1: ...                                     |
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.paged_read_ref import AxialRope
from qvg_serve.engine.paged_attention import ChunkRope


class DenseCache:
    """Preallocated post-RoPE K/V for `streams` streams of up to `capacity` tokens each."""

    def __init__(self, layers, streams, capacity, heads, head_dim, device, dtype) -> None:
        shape = (layers, streams, capacity, heads, head_dim)
        # random history: timing does not depend on the values, only never on zeros
        self.k = torch.empty(shape, device=device, dtype=dtype).normal_()
        self.v = torch.empty(shape, device=device, dtype=dtype).normal_()


class DenseSFContext:
    """One forward of `streams` equal-length chunks over `history` cached tokens each."""

    def __init__(self, cache: DenseCache, rope: AxialRope, history: int, q_pos, streams: int):
        self.cache, self.history, self.streams = cache, history, streams
        self.rope = ChunkRope(rope, q_pos.repeat(streams))
        cap, lq = cache.k.shape[2], q_pos.numel()
        if history + lq > cap:
            raise ValueError("DenseSFContext: history + chunk exceed the cache capacity")
        # the chunk's rows in the flattened [streams * capacity] cache of one layer
        first = torch.arange(streams, device=q_pos.device)[:, None] * cap + history
        self.rows = (first + torch.arange(lq, device=q_pos.device)).reshape(-1)

    def self_attention(self, layer: int, q, k, v) -> torch.Tensor:
        b, h = self.streams, self.history
        lq = q.shape[0] // b
        kc, vc = self.cache.k[layer, :b], self.cache.v[layer, :b]
        # RoPE on the new chunk only; its k and v into the cache (one fused pass on CUDA)
        qr = self.rope.qkv(q, k, v, kc.flatten(0, 1), vc.flatten(0, 1), self.rows)
        qb = qr.view(b, lq, *q.shape[1:]).transpose(1, 2)
        kk, vv = (x[:, : h + lq].transpose(1, 2) for x in (kc, vc))
        return F.scaled_dot_product_attention(qb, kk, vv).transpose(1, 2).reshape(q.shape)
