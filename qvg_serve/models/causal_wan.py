"""CausalWan: the chunk-causal Wan2.1 text-to-video DiT that Self-Forcing and CausVid sample.

One forward runs a batch of chunks from different streams, each at its own timestep and with
its own text, as one flat token matrix:

    chunks ─patchify─> x [N = sum of chunk tokens, dim]  (fp32 residual stream)
    t_b ─sinusoid─> time_embedding ─> e [B, dim] ─time_projection─> e0 [B, 6, dim]
    text_b ─pad─> text_embedding ─> context [B, text_len, dim]
    per block: x += gate * self_attn(ctx)   (each chunk's rows use their own e0[b])
               x += cross_attn(x_b -> context[b])
               x += gate * ffn
    head(x, e) ─unpatchify─> flow prediction [C, F, H, W] per chunk (fp32); an x0 head
      (`ModelConfig.prediction`) predicts the clean chunk, returned as its flow

Self-attention is the only place chunks meet their history: the model hands q, k, v (k after
norm_k, before RoPE) to the `AttentionContext`, which owns the cache and applies `rope`.
Parameter names are Wan2.1's, so `diffusion_pytorch_model.safetensors` and Self-Forcing
checkpoints load through `models.loader` without renaming.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kernels.paged_read_ref import AxialRope
from qvg_serve.models.base import (
    X0_SIGMA_MIN,
    AttentionContext,
    ChunkInput,
    ModelConfig,
    sigma,
)
from qvg_serve.models.wan_blocks import (
    Segments,
    WanBlock,
    WanHead,
    WanRope,
    linear32,
    patchify,
    sinusoidal_embedding,
    unpatchify,
)


class CausalWan(nn.Module):
    """Wan2.1 T2V backbone behind the `VideoModel` protocol (see `qvg_serve.models.base`)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.patch[0] != 1:
            # Stream positions count latent frames as token frames (model.chunk_positions).
            raise ValueError(f"patch {config.patch}: CausalWan needs a temporal patch of 1")
        c = self.config = config
        self.patch_embedding = nn.Conv3d(c.in_channels, c.dim, c.patch, stride=c.patch)
        self.text_embedding = nn.Sequential(
            nn.Linear(c.text_dim, c.dim), nn.GELU(approximate="tanh"), nn.Linear(c.dim, c.dim)
        )
        self.time_embedding = nn.Sequential(
            nn.Linear(c.freq_dim, c.dim), nn.SiLU(), nn.Linear(c.dim, c.dim)
        )
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(c.dim, 6 * c.dim))
        self.blocks = nn.ModuleList(
            WanBlock(c.dim, c.heads, c.ffn_dim, c.eps) for _ in range(c.layers)
        )
        self.head = WanHead(c.dim, c.in_channels, c.patch, c.eps)
        if c.frame_pos_embedding:  # zero at init: the model starts as without it
            self.pos_embedding = nn.Parameter(torch.zeros(c.tokens_per_frame, c.dim))
        if c.text_modulation:  # mean word vector -> added to the timestep embedding
            self.text_modulation = nn.Sequential(
                nn.Linear(c.text_dim, c.dim), nn.SiLU(), nn.Linear(c.dim, c.dim)
            )
        self.rotary = WanRope(c.head_dim, c.grid)  # buffers only, not in the state dict
        self._axial = self.rotary.axial()

    @property
    def dtype(self) -> torch.dtype:
        return self.patch_embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.patch_embedding.weight.device

    def rope(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Rotate x [tokens, H, D] at stream positions [tokens] (3D RoPE, see `WanRope`)."""
        return self.rotary(x, positions)

    def axial_rope(self) -> AxialRope:
        """`rope` as an AxialRope, for the fused paged read (RoPE applied while reading)."""
        return self._axial

    def forward(self, chunks: Sequence[ChunkInput], ctx: AttentionContext) -> list[torch.Tensor]:
        """Flow prediction [C, F, H, W] (fp32) per chunk, in batch order."""
        if not chunks:
            return []
        grids = [self._grid(chunk.latents) for chunk in chunks]
        segs = Segments([math.prod(g) for g in grids], self.device)
        # Chunks of one shape (training, rollouts, most engine batches) go through patchify,
        # unpatchify and the x0 head's flow as one batch: per-chunk ops there were most of
        # the kernel launches of a many-chunk forward (values the same as chunk by chunk).
        stacked = torch.stack([ch.latents for ch in chunks]) if len(set(grids)) == 1 else None
        x = self._embed_latents(chunks, stacked)
        t = torch.tensor([float(chunk.timestep) for chunk in chunks], device=self.device)
        e = self._embed_time(t)
        context, words = self._embed_text(chunks)
        if self.config.text_modulation:
            m = self.text_modulation
            e = e + linear32(m[2], F.silu(linear32(m[0], words)))
        e0 = linear32(self.time_projection[1], F.silu(e)).unflatten(1, (6, self.config.dim))
        for layer, block in enumerate(self.blocks):
            x = block(x, e0, segs, context, ctx, layer)
        out = self.head(x, e, segs)
        patch = self.config.patch
        if stacked is not None:
            b, (f, h, w) = len(chunks), grids[0]
            heads = unpatchify(out, (b * f, h, w), patch)  # [C, B * F', H', W']
            heads = heads.unflatten(1, (b, -1)).transpose(0, 1)  # [B, C, F', H', W']
            if self.config.prediction == "x0":
                sig = [max(sigma(ch.timestep, self.config.shift), X0_SIGMA_MIN) for ch in chunks]
                sig = torch.tensor(sig, device=heads.device)[:, None, None, None, None]
                lat = stacked.to(heads.device, torch.float32)
                heads = (lat - heads.float()) / sig
            return list(heads.contiguous().unbind(0))
        heads = [
            unpatchify(o, g, patch) for o, g in zip(out.split(segs.lengths), grids, strict=True)
        ]
        if self.config.prediction == "x0":
            return [self._flow_from_x0(ch, x0) for ch, x0 in zip(chunks, heads, strict=True)]
        return heads

    def _flow_from_x0(self, chunk: ChunkInput, x0: torch.Tensor) -> torch.Tensor:
        """An x0 head's output -> the flow (x_t - x0) / max(sigma(t), X0_SIGMA_MIN), fp32."""
        sig = max(sigma(chunk.timestep, self.config.shift), X0_SIGMA_MIN)
        return (chunk.latents.to(x0.device, torch.float32) - x0.float()) / sig

    def _grid(self, latents: torch.Tensor) -> tuple[int, int, int]:
        """Token grid (frames, rows, cols) of a chunk; its latent shape must fit the config
        (RoPE maps stream positions through the config's grid)."""
        c = self.config
        want = (c.in_channels, c.latent_height, c.latent_width)
        if latents.dim() != 4 or (latents.shape[0], *latents.shape[2:]) != want:
            raise ValueError(
                f"chunk latents {tuple(latents.shape)}: expected [C={want[0]}, F, "
                f"H={want[1]}, W={want[2]}] for model {c.name!r}"
            )
        return (latents.shape[1], *c.grid)

    def _embed_latents(self, chunks: Sequence[ChunkInput], stacked=None) -> torch.Tensor:
        """Conv3d patch embedding as one matmul over all chunks -> [N, dim] fp32; `stacked`:
        the chunks' latents as one [B, C, F, H, W] (all of one shape)."""
        if stacked is not None:  # frames of chunk b follow chunk b - 1's: one patchify
            lat = stacked.to(self.device, self.dtype).transpose(0, 1).flatten(1, 2)
            patches = patchify(lat, self.config.patch)
        else:
            per_chunk = [ch.latents.to(self.device, self.dtype) for ch in chunks]
            patches = torch.cat([patchify(lat, self.config.patch) for lat in per_chunk])
        w = self.patch_embedding.weight.flatten(1)
        x = F.linear(patches, w, self.patch_embedding.bias).float()
        if self.config.frame_pos_embedding:  # tokens are (frame, row, col): one frame = tpf
            x = x + self.pos_embedding.float().repeat(x.shape[0] // self.config.tokens_per_frame, 1)
        return x

    def _embed_time(self, t: torch.Tensor) -> torch.Tensor:
        """Timesteps [B] -> e [B, dim] fp32 (Wan runs this under fp32 autocast)."""
        h = sinusoidal_embedding(self.config.freq_dim, t)
        h = F.silu(linear32(self.time_embedding[0], h))
        return linear32(self.time_embedding[2], h)

    def _embed_text(self, chunks: Sequence[ChunkInput]) -> tuple[torch.Tensor, torch.Tensor]:
        """Text [L <= text_len, text_dim] per chunk, zero-padded to text_len as Wan does
        -> (context [B, text_len, dim] in the module dtype, mean word vector [B, text_dim]
        fp32)."""
        c = self.config
        padded = torch.zeros(
            len(chunks), c.text_len, c.text_dim, device=self.device, dtype=self.dtype
        )
        for b, chunk in enumerate(chunks):
            text = chunk.text
            if text.dim() != 2 or text.shape[0] > c.text_len or text.shape[1] != c.text_dim:
                raise ValueError(
                    f"chunk {b} text {tuple(text.shape)}: expected [<= {c.text_len}, {c.text_dim}]"
                )
        lengths = {chunk.text.shape[0] for chunk in chunks}
        if len(lengths) == 1:  # one copy for the batch
            n = lengths.pop()
            padded[:, :n] = torch.stack([ch.text for ch in chunks]).to(self.device, self.dtype)
        else:
            for b, chunk in enumerate(chunks):
                padded[b, : chunk.text.shape[0]] = chunk.text.to(self.device, self.dtype)
        # the mean word vector (padding rows are zero; an empty text gives zero)
        words = (padded != 0).any(-1).sum(-1, keepdim=True).clamp(min=1)
        return self.text_embedding(padded), padded.float().sum(1) / words


def init_weights(model: CausalWan, seed: int) -> None:
    """Deterministic random weights for `seed` (per device type): xavier-uniform matrices
    (Conv3d as its flattened matrix), N(0, 0.02) biases, modulations N(0, 1/dim) as in Wan,
    norm weights 1 + N(0, 0.1). Unlike Wan's training init the head is not zeroed, so a
    randomly initialised model gives non-trivial outputs for tests and benchmarks."""
    gen = torch.Generator(device=model.device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("modulation"):
                p.normal_(0.0, p.shape[-1] ** -0.5, generator=gen)
            elif p.dim() >= 2:
                fan_out, fan_in = p.shape[0], p[0].numel()
                bound = math.sqrt(6.0 / (fan_in + fan_out))
                p.uniform_(-bound, bound, generator=gen)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.02, generator=gen)
            else:
                p.normal_(1.0, 0.1, generator=gen)


def build_model(
    config: ModelConfig,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> CausalWan:
    """A CausalWan with random weights (deterministic for `seed` on a device type), in eval
    mode. device="meta" allocates nothing (shapes and parameter counts only)."""
    device = torch.device(device)
    with torch.device(device):
        model = CausalWan(config)
    if device.type != "meta":
        init_weights(model, seed)
    return model.to(dtype=dtype).eval()


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
