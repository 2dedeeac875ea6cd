"""What the engine hands out through its door: plain values, no live references.

`serve/` (and `generate`, the benches) see the engine only through `Engine`'s public methods and
these types, so nothing outside the engine room holds a scheduler record, an allocator or a
tensor-side stream state.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class Chunk(NamedTuple):
    """One generated chunk as delivered to a client."""

    index: int
    frames: torch.Tensor  # uint8 [frames, H, W, 3] on the CPU
    latents: torch.Tensor  # the chunk's clean latents [C, F, h, w] on the CPU


class StepStats(NamedTuple):
    """What one step did besides the forward (counts; the scheduler's own lists, consumed)."""

    plans_done: int
    plans_failed: int
    pages_freed: int
    admitted: int
    preempted: int
    degraded: int
    gpu_use: float
    """Projected GPU pool use after pending plans commit, 0..1."""


class StepReport(NamedTuple):
    """One `Engine.step()`: the chunks it produced and the streams that ended."""

    step: int
    batch: int
    """Streams in the forward pass (0 = an idle step)."""
    chunks: tuple[tuple[int, Chunk], ...]
    """(stream id, chunk) produced this step, in commit order."""
    ended: tuple[tuple[int, str], ...]
    """(stream id, end reason) of streams that ended (the scheduler's `ended` list): the
    engine has released their tensor state; they produce nothing more."""
    stats: StepStats


class CancelResult(NamedTuple):
    live: bool
    """Whether the stream was live (waiting, running or preempted) when cancelled."""
    pages_held: int
    """Pages still held by the stream after the cancel (0: every page was freed at once)."""


class KVStats(NamedTuple):
    """The pool and the streams at a glance (for gauges, capacity and the web page)."""

    pages: dict[tuple[str, str], int]
    """(format, tier) -> pages held."""
    used_bytes: dict[tuple[str, str], int]
    """(format, tier) -> bytes those pages occupy (exact page sizes)."""
    total_bytes: dict[str, int]
    """tier -> arena bytes."""
    free_bytes: dict[str, int]
    """tier -> bytes free."""
    bf16_page_bytes: int
    """Bytes of one page in BF16: what `pages` would cost uncompressed."""
    streams: dict[str, int]
    """state -> streams (live and recently ended)."""
    waiting: int
    ladder: dict[str, int]
    """Ladder rung -> transitions so far (cumulative)."""
    tenants: dict[str, tuple[int, int, int]]
    """Capped tenant -> (GPU pages held, wanted next, page_cap): what its lease follows
    (Engine.set_page_leases; serve/quota.py)."""


class ModelFacts(NamedTuple):
    """What a client of the engine needs to know about its model."""

    name: str
    frames_per_chunk: int
    """Video frames a chunk decodes to (latent frames x the decoder's temporal upsampling)."""
    latent_frames_per_chunk: int
    tokens_per_frame: int
    layers: int
    text_shape: tuple[int, int]
    """(text_len, text_dim) of the conditioning `submit` and `set_text` take."""


class ResumeState(NamedTuple):
    """What a stream committed elsewhere (another replica, before a failure or a drain):
    `Engine.submit(..., resume=)` continues it from chunk `chunks_done` with the same seed.
    The noise of chunk k is a function of (seed, k) (sampler.StreamNoise), so no noise state
    travels; the cache is rebuilt from `latents` by the scheduler's recompute pass."""

    latents: torch.Tensor
    """Clean committed latents [C, chunks_done * latent frames per chunk, h, w] (any device)."""
    chunks_done: int
    """Chunks already committed (and delivered); the stream's next chunk has this index."""

    def checked(self, mc) -> int:
        """`chunks_done`, after checking the latents' shape against model config `mc`."""
        want = (mc.in_channels, self.chunks_done * mc.frames_per_chunk, mc.latent_height,
                mc.latent_width)  # fmt: skip
        if self.chunks_done < 1 or tuple(self.latents.shape) != want:
            raise ValueError(
                f"resume.latents must be {want} for resume.chunks_done = {self.chunks_done} "
                f"(>= 1), got {tuple(self.latents.shape)}"
            )
        return self.chunks_done
