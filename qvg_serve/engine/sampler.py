"""Few-step flow-matching sampler (Self-Forcing / CausVid style), one stream at a time.

Noise level sigma(t) = shift * s / (1 + (shift - 1) * s) with s = t / 1000 (the shifted
schedule of Wan's flow matching). A model predicts the flow v = noise - x0 at x_t =
(1 - sigma) x0 + sigma noise; each step takes the clean estimate x0 = x_t - sigma v and
re-noises it with fresh noise to the next timestep. After the last step the clean estimate is
the chunk: the commit pass runs the model on it at t = 0 to write its K/V.

Noise comes from each stream's own seeded generator (CPU, then moved), reseeded at the start of
every chunk from (seed, chunk) and drawn in a fixed order within it (step by step): a stream's
video does not depend on what it is batched with, and a stream resumed at chunk k on another
replica draws exactly the noise it would have drawn without the interruption.
"""

from __future__ import annotations

import torch

from qvg_serve.models.base import sigma

_MASK64 = (1 << 64) - 1


def chunk_seed(seed: int, chunk: int) -> int:
    """The generator seed of `chunk` of a stream seeded `seed`: `seed` itself for chunk 0, a
    SplitMix64 mix of (seed, chunk) after it (neighbouring chunks and seeds stay unrelated)."""
    if chunk == 0:
        return seed
    z = (seed * 0x9E3779B97F4A7C15 + chunk * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) >> 1  # torch seeds are < 2**63


class StreamNoise:
    """A stream's reproducible noise source: a function of (seed, chunk) once `begin(chunk)`
    is called at each chunk's first draw (the engine does); without it, one sequence."""

    def __init__(self, seed: int, shape: tuple[int, ...]) -> None:
        self.seed = seed
        self.gen = torch.Generator().manual_seed(seed)
        self.shape = shape

    def begin(self, chunk: int) -> None:
        """Reseed for `chunk`: its draws no longer depend on the chunks drawn before it."""
        self.gen.manual_seed(chunk_seed(self.seed, chunk))

    def draw(self, device, dtype) -> torch.Tensor:
        return torch.randn(self.shape, generator=self.gen).to(device=device, dtype=dtype)


def guided(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance of a flow: uncond + scale * (cond - uncond), in fp32."""
    u = uncond.float()
    return (u + scale * (cond.float() - u)).to(cond.dtype)


def null_text(text_dim: int, device=None) -> torch.Tensor:
    """The empty prompt [0, text_dim]: the model pads it to all zeros (its unconditional
    input, as text dropout trained it)."""
    return torch.zeros(0, text_dim, device=device)


def guide(model, inputs, flows, ctx, scale: float) -> list[torch.Tensor]:
    """Classifier-free guidance of `flows` (the model's on `inputs`, ChunkInputs): the same
    inputs once more with the empty prompt, in `ctx` (an AttentionContext over the same
    history that keeps nothing), then `guided` per chunk."""
    text = inputs[0].text
    empty = null_text(text.shape[-1], text.device).to(text.dtype)
    uncond = model([inp._replace(text=empty) for inp in inputs], ctx)
    return [guided(c, u, scale) for c, u in zip(flows, uncond, strict=True)]


def start(noise: StreamNoise, device, dtype) -> torch.Tensor:
    """x at the first timestep: pure noise (the sampler's first sigma is 1 at t = 1000)."""
    return noise.draw(device, dtype)


def step(
    x_t: torch.Tensor,
    flow: torch.Tensor,
    t: float,
    t_next: float | None,
    shift: float,
    noise: StreamNoise,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x at t_next, clean estimate x0). With t_next None the chunk is done: x = x0."""
    s = sigma(t, shift)
    x0 = (x_t.float() - s * flow.float()).to(x_t.dtype)
    if t_next is None:
        return x0, x0
    s_next = sigma(t_next, shift)
    eps = noise.draw(x_t.device, torch.float32)
    return ((1.0 - s_next) * x0.float() + s_next * eps).to(x_t.dtype), x0
