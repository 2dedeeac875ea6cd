"""Self-attention contexts of the tiny model's training (`qvg_serve.tiny.objective`, `tiny.dmd`):
the block-causal mask of one teacher-forced forward, and the batched dense history of a
rollout in which every stream is at the same position."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from qvg_serve.models.base import chunk_positions


class BlockCausalContext:
    """Self-attention of B equal samples, each [clean 0..K-2 | noisy 0..K-1] chunks, under
    one [L, L] block-causal mask (L tokens per sample)."""

    def __init__(self, model, chunks: int) -> None:
        cfg = model.config
        n = cfg.chunk_tokens
        clean = [chunk_positions(cfg, i * cfg.frames_per_chunk) for i in range(chunks - 1)]
        noisy = [chunk_positions(cfg, i * cfg.frames_per_chunk) for i in range(chunks)]
        self.positions = torch.cat(clean + noisy).to(model.device)
        idx = torch.cat([torch.arange(chunks - 1), torch.arange(chunks)]).repeat_interleave(n)
        is_noisy = torch.arange(2 * chunks - 1).repeat_interleave(n) >= chunks - 1
        q, k = idx[:, None], idx[None, :]
        sees_clean = ~is_noisy[None, :] & ((k <= q) & ~is_noisy[:, None] | (k < q))
        sees_self = is_noisy[:, None] & is_noisy[None, :] & (q == k)
        allowed = (sees_clean | sees_self).to(model.device)
        # Additive (not boolean) so SDPA keeps its memory-efficient kernel.
        self.mask = torch.zeros(allowed.shape, device=model.device).masked_fill(
            ~allowed, float("-inf")
        )
        self.model, self.length = model, self.positions.shape[0]

    def self_attention(self, layer, q, k, v):
        """q, k, v [B * L, H, D] -> [B * L, H, D]."""
        b, h = q.shape[0] // self.length, q.shape[1]

        def heads(x, rope):  # [B*L, H, D] -> [B, H, L, D], rotated at sample positions
            x = x.view(b, self.length, h, -1).transpose(0, 1).reshape(self.length, b * h, -1)
            if rope:
                x = self.model.rope(x, self.positions)
            return x.view(self.length, b, h, -1).permute(1, 2, 0, 3)

        out = F.scaled_dot_product_attention(
            heads(q, True), heads(k, True), heads(v, False), attn_mask=self.mask.to(q.dtype)
        )
        return out.permute(0, 2, 1, 3).reshape(q.shape)


class LockstepContext:
    """Self-attention of B streams that are at the same position (a rollout: every stream
    holds chunks 0..i-1 and draws chunk i), one SDPA per layer for the whole batch. Keys are
    cached after RoPE: every stream has the same positions, so a chunk's keys are rotated
    once, when it is committed. The same attention as `DenseContext` over B equal-length
    histories (tested), without its per-stream loop."""

    def __init__(self, model, batch: int) -> None:
        self.model, self.batch = model, batch
        self.k: list[torch.Tensor | None] = [None] * model.config.layers
        self.v: list[torch.Tensor | None] = [None] * model.config.layers
        self.start_frame, self.commit = 0, False

    def at(self, start_frame: int, commit: bool = False) -> LockstepContext:
        """The context of the next forward: chunks starting at `start_frame` (the end of the
        history), their K/V appended after use if `commit`."""
        held = 0 if self.k[0] is None else self.k[0].shape[2]
        if start_frame * self.model.config.tokens_per_frame != held:
            raise ValueError(f"chunk at frame {start_frame} after a history of {held} tokens")
        self.start_frame, self.commit = start_frame, commit
        return self

    def self_attention(self, layer, q, k, v):
        """q, k, v [B * L, H, D] (k before RoPE) -> [B * L, H, D]."""
        b, h = self.batch, q.shape[1]
        n = q.shape[0] // b
        pos = chunk_positions(self.model.config, self.start_frame, q.device)[:n]

        def heads(x, rope):  # [B*L, H, D] -> [B, H, L, D]
            x = x.view(b, n, h, -1).transpose(0, 1).reshape(n, b * h, -1)
            if rope:
                x = self.model.rope(x, pos)
            return x.view(n, b, h, -1).permute(1, 2, 0, 3)

        qr, kr, vr = heads(q, True), heads(k, True), heads(v, False)
        keys, values = kr, vr
        if self.k[layer] is not None:
            keys = torch.cat([self.k[layer], kr], dim=2)
            values = torch.cat([self.v[layer], vr], dim=2)
        out = F.scaled_dot_product_attention(qr, keys, values)
        if self.commit:
            self.k[layer], self.v[layer] = keys, values
        return out.permute(0, 2, 1, 3).reshape(q.shape)
