"""Model configs by name: the full Self-Forcing / Wan2.1-T2V-1.3B shapes and tiny test shapes."""

from __future__ import annotations

from dataclasses import replace

from qvg_serve.models.base import ModelConfig

SELF_FORCING_1_3B = ModelConfig(
    name="self-forcing-1.3b",
    layers=30,
    dim=1536,
    heads=12,
    ffn_dim=8960,
    in_channels=16,
    patch=(1, 2, 2),
    latent_height=60,
    latent_width=104,
    frames_per_chunk=3,
    text_dim=4096,
    text_len=512,
    freq_dim=256,
    timesteps=(1000.0, 750.0, 500.0, 250.0),
)
"""Wan2.1-T2V-1.3B backbone (1,560 tokens per latent frame, 4,680 per chunk) as Self-Forcing
samples it: 3 latent frames per chunk, 4 denoising steps."""

TINY_TEST = ModelConfig(
    name="tiny-test",
    layers=2,
    dim=48,
    heads=2,
    ffn_dim=80,
    in_channels=4,
    patch=(1, 2, 2),
    latent_height=10,
    latent_width=14,
    frames_per_chunk=3,
    text_dim=24,
    text_len=7,
    freq_dim=16,
    timesteps=(1000.0, 500.0),
)
"""CPU tests: head_dim 24 splits into RoPE parts 8/8/8; a 5 x 7 token grid (35 tokens per
frame, not a power of two) so row/column mix-ups show."""

TINY = ModelConfig(
    name="tiny",
    layers=6,
    dim=256,
    heads=4,
    ffn_dim=1024,
    in_channels=48,
    patch=(1, 2, 2),
    latent_height=16,
    latent_width=24,
    frames_per_chunk=3,
    text_dim=64,
    text_len=16,
    freq_dim=64,
    timesteps=(1000.0, 750.0, 500.0, 250.0),
    frames_per_latent=1,
    frame_pos_embedding=True,
    text_modulation=True,
    prediction="x0",
)
"""The model the project trains and ships (`qvg_serve/weights/tiny.safetensors`, fp16,
~13 MB; `python -m qvg_serve.tiny.train`): near-pixel space through `PixelAE` (64 x 96 RGB
frames, pixel-unshuffle by 4 -> 48 x 16 x 24 latents, one latent frame per video frame),
8 x 12 = 96 tokens per frame, 3 frames per chunk, Wan's 4-step sampler; head_dim 64 so
every QVG group size (16..64) divides it. Text: `HashedWordEncoder(16, 64)`. Unlike Wan2.1 it
has a frame position embedding (`frame_pos_embedding`): it draws a caption's fixed first pose
from noise, where RoPE alone does not say where a token is; and the caption also modulates
every block (`text_modulation`), as well as entering through cross-attention. Its head
predicts the clean chunk (`prediction="x0"`, returned as the flow): its patches are 192
values wide next to a 256-wide model, where a flow head must carry the noise through."""


TINY_OPS = replace(TINY, name="tiny-ops", layers=1, dim=64, heads=1, ffn_dim=128, freq_dim=32)
"""Operations benchmarks only (random weights, nothing to see in its frames): the tiny
model's token layout and chunking with one narrow layer, so a CPU serves streams ~20x faster
and `bench serve --scenario rss` can finish a thousand of them; head_dim 64, so every pool
format stores its pages as for `tiny`."""


PRESETS: dict[str, ModelConfig] = {
    c.name: c for c in (SELF_FORCING_1_3B, TINY, TINY_TEST, TINY_OPS)
}


def get_preset(name: str) -> ModelConfig:
    """The config called `name`; ValueError lists the known names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}") from None
