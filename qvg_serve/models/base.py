"""The model protocol the engine drives: a config, one forward over a batch of chunks, and the
attention hook through which every layer's self-attention reaches the KV cache.

A batch mixes streams at different denoising steps (per-sample timesteps). The model computes
q, k, v for all chunk tokens of the batch at once and hands each layer's self-attention to an
`AttentionContext`, which owns the cache: the engine's context reads history from the paged
pool (`paged_attention.batch_attention`), a test's `DenseContext` from contiguous tensors.
Keys reach the context before RoPE; the context applies `model.rope` to history and chunk
keys alike, so cached keys are position-free (they quantize alike wherever they sit).

    engine ──ChunkInput×N──> model.forward ──per layer: q,k,v──> ctx.self_attention
                                  │                                   │ history (pool) + chunk
                                  <──────────── out [tokens, H, D] ───┘
    commit pass: same forward at t = 0 on clean latents; the context captures each layer's
    pre-RoPE k, v (the engine reads them with `PagedContext.kv_of`) and the engine writes them
    into new bf16 pages.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, Protocol

import torch

if TYPE_CHECKING:  # models/ sits below the engine room: no import of it at load time
    from qvg_serve.engine.kv_format import KVShape


def sigma(t: float, shift: float) -> float:
    """Noise level of timestep t in [0, 1000]: shift s / (1 + (shift - 1) s), s = t / 1000
    (the shifted schedule of Wan's flow matching; `engine.sampler` samples with it)."""
    s = t / 1000.0
    return shift * s / (1.0 + (shift - 1.0) * s)


PREDICTIONS = ("flow", "x0")
X0_SIGMA_MIN = 0.05
"""An x0 head's flow divides by max(sigma, this) (sigma -> 0 at t -> 0: the commit pass's
clean chunk, whose output nobody reads, and < 1 % of training timesteps)."""


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """Shapes of a chunk-causal video DiT (Wan2.1 family) and its few-step sampler."""

    name: str
    """Preset name, e.g. "self-forcing-1.3b" or "tiny"."""
    layers: int
    """Transformer blocks (each has one self-attention KV cache)."""
    dim: int
    """Hidden width; heads * head_dim."""
    heads: int
    """Attention heads (self- and cross-attention)."""
    ffn_dim: int
    """FFN hidden width."""
    in_channels: int = 16
    """Latent channels (16 for the Wan VAE)."""
    patch: tuple[int, int, int] = (1, 2, 2)
    """Patch size (frames, height, width) of the patch embedding."""
    latent_height: int = 60
    """Latent frame height (480 px / 8 for Wan's VAE)."""
    latent_width: int = 104
    """Latent frame width (832 px / 8)."""
    frames_per_chunk: int = 3
    """Latent frames generated per chunk (Self-Forcing: 3)."""
    text_dim: int = 4096
    """Width of the precomputed text embeddings (umT5-XXL: 4096)."""
    text_len: int = 512
    """Text tokens per prompt (padded)."""
    freq_dim: int = 256
    """Sinusoidal timestep embedding width."""
    timesteps: tuple[float, ...] = (1000.0, 750.0, 500.0, 250.0)
    """Denoising timesteps of the few-step sampler, first to last; the commit pass uses t=0."""
    eps: float = 1e-6
    """LayerNorm / RMSNorm epsilon."""
    frames_per_latent: int = 4
    """Video frames one latent frame decodes to (Wan's VAE: 4; a pixel-space model: 1)."""
    frame_pos_embedding: bool = False
    """A learned vector per token place in a frame (rows x cols), added after the patch
    embedding: absolute position in the frame, which RoPE (relative) does not give. Wan2.1
    has none; the tiny preset has one: it draws a caption's fixed first pose from noise, and
    drawing an outline there needs each token to know where it is."""
    text_modulation: bool = False
    """The caption also modulates every block (adaLN, as DiT conditions on a class label):
    the mean of the prompt's word vectors, through a small MLP, is added to the timestep
    embedding that sets each block's shift / scale / gate and the head's. Wan2.1 has none
    (its text enters through cross-attention only)."""
    guidance: float = 1.0
    """Classifier-free guidance scale of the denoising passes: flow = uncond + guidance *
    (cond - uncond), uncond with an empty text (all-zero padding). 1.0: one pass, no
    guidance (Self-Forcing's distilled sampler needs none); > 1 doubles the denoising work.
    Only for a model trained with text dropout (`tiny.train --text-dropout`); every preset
    has 1.0 (on the tiny model, scales 2-4.5 measured worse: docs/tiny_model.md)."""

    prediction: str = "flow"
    """What the network's head outputs: "flow" (v = noise - x0, Wan2.1 and Self-Forcing) or
    "x0" (the clean chunk, as JiT argues for when a token's patch is wide next to the
    model: the tiny model's 192 values per token against dim 256). Either way `forward`
    returns the flow: an x0 head's output becomes (x_t - x0) / sigma(t), sigma from
    `shift` and floored at `X0_SIGMA_MIN`, so the sampler, the engine and the loss are the
    same for both; at every sampler step (sigma >= 0.63) the sampler's clean estimate x_t -
    sigma * flow is the head's x0 exactly."""
    shift: float = 5.0
    """Timestep shift of the noise schedule, sigma(t) = shift s / (1 + (shift - 1) s), s =
    t / 1000: the engine's `SHIFT` (5.0, every preset); only an x0 head reads it."""

    def __post_init__(self) -> None:
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not a multiple of heads {self.heads}")
        if not self.guidance >= 1.0:
            raise ValueError(f"guidance must be >= 1.0, got {self.guidance}")
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {self.prediction!r}")
        _, ph, pw = self.patch
        if self.latent_height % ph or self.latent_width % pw:
            raise ValueError("latent_height/latent_width must be multiples of the patch size")

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def grid(self) -> tuple[int, int]:
        """Token grid (rows, cols) of one latent frame."""
        return self.latent_height // self.patch[1], self.latent_width // self.patch[2]

    @property
    def tokens_per_frame(self) -> int:
        rows, cols = self.grid
        return rows * cols

    @property
    def chunk_tokens(self) -> int:
        return self.tokens_per_frame * self.frames_per_chunk // self.patch[0]

    def kv_shape(self) -> KVShape:
        """One pool page = one latent frame of every layer's K and V."""
        from qvg_serve.engine.kv_format import KVShape

        return KVShape(self.layers, self.heads, self.head_dim, self.tokens_per_frame)


class ChunkInput(NamedTuple):
    """One stream's chunk in a batch."""

    latents: torch.Tensor  # [C, F, H, W] noisy (or clean, for the commit pass) latents
    timestep: float  # this sample's t (0.0 for the commit pass)
    text: torch.Tensor  # [text_len, text_dim] precomputed text embeddings
    start_frame: int  # latent frame index of the chunk's first frame (RoPE positions)


class AttentionContext(Protocol):
    """Where a batch's self-attention meets the cache (one call per layer, in layer order)."""

    def self_attention(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        """q, k, v [sum of chunk tokens, H, D] (k before RoPE), chunks in batch order ->
        attention output [sum of chunk tokens, H, D]: each chunk attends to its own stream's
        history and to all of its own chunk (chunk-causal)."""
        ...


class VideoModel(Protocol):
    """What the engine needs from a model adapter."""

    config: ModelConfig

    def rope(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Rotate x [tokens, H, D] at token positions [tokens] (index in the stream)."""
        ...

    def forward(self, chunks: Sequence[ChunkInput], ctx: AttentionContext) -> list[torch.Tensor]:
        """Flow prediction [C, F, H, W] per chunk, in batch order."""
        ...


def chunk_positions(cfg: ModelConfig, start_frame: int, device=None) -> torch.Tensor:
    """Token positions (index in the stream) of a chunk starting at latent frame start_frame."""
    first = start_frame * cfg.tokens_per_frame
    return torch.arange(first, first + cfg.chunk_tokens, device=device)
