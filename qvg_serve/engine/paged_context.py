"""`AttentionContext` over the paged pool: what the engine hands the model for one step.

The batch's page tables are resolved once per step (ReadPlans -> one `BatchRead`: page
offsets, formats, workspace rows, positions); each layer is then one fused paged read plus
one attention call for the whole batch. On a commit or recompute pass an entry also captures
its chunk's pre-RoPE K/V of every layer, for the engine to write into new BF16 pages.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from qvg_serve.engine import sampler
from qvg_serve.engine.kv_pool import KVPool, ReadPlan
from qvg_serve.engine.paged_attention import BatchRead, Rope, Workspace


class Entry(NamedTuple):
    """One batch entry's view of the cache."""

    history: ReadPlan
    history_pos: torch.Tensor  # int64 [history tokens] token positions in the stream
    q_pos: torch.Tensor  # int64 [chunk tokens]
    capture: bool  # keep this chunk's K/V (commit / recompute)


class PagedContext:
    """Self-attention of a batch over the pool, layer by layer."""

    def __init__(self, pool: KVPool, ws: Workspace, rope: Rope, entries: Sequence[Entry]):
        self.pool, self.ws, self.rope, self.entries = pool, ws, rope, list(entries)
        self.lengths = [e.q_pos.numel() for e in self.entries]
        hist = [e.history for e in self.entries]
        pos = [e.history_pos for e in self.entries]
        self.read = BatchRead(pool, ws, rope, hist, pos, [e.q_pos for e in self.entries])
        self.captured: list[dict[int, tuple[torch.Tensor, torch.Tensor]]] = [
            {} for _ in self.entries
        ]

    def self_attention(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        if any(e.capture for e in self.entries):
            ks, vs = k.split(self.lengths), v.split(self.lengths)
            for i, e in enumerate(self.entries):
                if e.capture:
                    self.captured[i][layer] = (ks[i], vs[i])
        return self.read.attend(layer, q, k, v)

    def kv_of(self, index: int, layers: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Captured K, V of entry `index`: [layers, H, tokens, D] each (pre-RoPE)."""
        got = self.captured[index]
        if len(got) != layers:
            raise RuntimeError(f"entry {index} captured {len(got)} of {layers} layers")
        k = torch.stack([got[layer][0].transpose(0, 1) for layer in range(layers)])
        v = torch.stack([got[layer][1].transpose(0, 1) for layer in range(layers)])
        return k, v


def run_batch(
    model, pool: KVPool, ws: Workspace, inputs, entries: Sequence[Entry], guided=(), scale=1.0
) -> tuple[PagedContext, list[torch.Tensor]]:
    """One forward of a batch over the pool: (its context, a flow per entry). The entries at
    indices `guided` get classifier-free guidance at `scale` (`sampler.guide`): once more
    with the empty prompt, over the same history, in a second context that captures
    nothing (the workspace is reused: the first forward is done with it)."""
    ctx = PagedContext(pool, ws, model.rope, entries)
    flows = model.forward(inputs, ctx)
    if guided and scale != 1.0:
        again = PagedContext(
            pool, ws, model.rope, [entries[i]._replace(capture=False) for i in guided]
        )
        got = sampler.guide(
            model, [inputs[i] for i in guided], [flows[i] for i in guided], again, scale
        )
        flows = list(flows)
        for i, flow in zip(guided, got, strict=True):
            flows[i] = flow
    return ctx, flows
