"""A dense-cache `AttentionContext`: each stream's pre-RoPE K/V history as contiguous tensors.

The reference the paged pool is checked against, and the cache of chunk-by-chunk generation in
tests. One forward = one context (it knows the batch's chunks, hence their positions):

    history_b (layer l): k [n_b, H, D], v [n_b, H, D] at stream positions 0 .. n_b - 1
    chunk_b:             q, k, v [m_b, H, D] at positions start_frame_b * tokens_per_frame + i
    out_b = SDPA(rope(q_b), rope([k_hist; k_b]), [v_hist; v_b])   (no mask: chunk-causal)

With commit=True each chunk's k, v are appended to its stream's history after use, as the
commit pass (clean latents, t = 0) does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from qvg_serve.models.base import ChunkInput, VideoModel
from qvg_serve.models.wan_blocks import sdpa


@dataclass
class DenseKV:
    """One stream's history: per layer, pre-RoPE keys and values [tokens, H, D] (None: empty)."""

    k: list[torch.Tensor | None] = field(default_factory=list)
    v: list[torch.Tensor | None] = field(default_factory=list)

    @classmethod
    def empty(cls, layers: int) -> DenseKV:
        return cls([None] * layers, [None] * layers)

    def tokens(self, layer: int = 0) -> int:
        k = self.k[layer]
        return 0 if k is None else k.shape[0]

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        old_k, old_v = self.k[layer], self.v[layer]
        self.k[layer] = k if old_k is None else torch.cat([old_k, k])
        self.v[layer] = v if old_v is None else torch.cat([old_v, v])


class DenseContext:
    """Self-attention of one batch against dense per-stream histories (one per chunk)."""

    def __init__(
        self,
        model: VideoModel,
        histories: Sequence[DenseKV],
        chunks: Sequence[ChunkInput],
        commit: bool = False,
    ) -> None:
        if len(histories) != len(chunks):
            raise ValueError(f"{len(histories)} histories for {len(chunks)} chunks")
        if commit and len({id(h) for h in histories}) != len(histories):
            raise ValueError("commit=True with one history used by two chunks of the batch")
        cfg = model.config
        tpf = cfg.tokens_per_frame
        self.model, self.histories, self.commit = model, list(histories), commit
        self.lengths = [chunk.latents.shape[1] * tpf for chunk in chunks]
        self.positions = []
        for b, (hist, chunk) in enumerate(zip(histories, chunks, strict=True)):
            first = chunk.start_frame * tpf
            if hist.tokens() != first:
                # A dense history is the stream's whole prefix: no gaps, no overlap.
                raise ValueError(
                    f"chunk {b} starts at frame {chunk.start_frame} (token {first}) but its "
                    f"history holds {hist.tokens()} tokens"
                )
            self.positions.append(torch.arange(first, first + self.lengths[b]))

    def self_attention(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        """q, k, v [sum of chunk tokens, H, D] (k before RoPE) -> [sum of chunk tokens, H, D]."""
        outs = []
        splits = zip(
            q.split(self.lengths), k.split(self.lengths), v.split(self.lengths), strict=True
        )
        for b, (qb, kb, vb) in enumerate(splits):
            hist = self.histories[b]
            pos = self.positions[b].to(q.device)
            keys, values, kpos = kb, vb, pos
            if hist.k[layer] is not None:
                keys = torch.cat([hist.k[layer], kb])
                values = torch.cat([hist.v[layer], vb])
                kpos = torch.cat([torch.arange(hist.tokens(layer), device=q.device), pos])
            rope = self.model.rope
            outs.append(sdpa(rope(qb, pos), rope(keys, kpos), values))
            if self.commit:
                hist.append(layer, kb, vb)
        return torch.cat(outs)
