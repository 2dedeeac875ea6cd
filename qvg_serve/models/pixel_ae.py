"""PixelAE: the tiny model's fixed, exact "autoencoder" (no learned weights).

A 64 x 96 RGB frame becomes a 48 x 16 x 24 latent by pixel-unshuffle (space-to-depth) by 4:
latent channel c = 16 * colour + 4 * dy + dx holds pixel (4 * row + dy, 4 * col + dx) of
that colour. Values are normalised with one fixed affine map so latents have roughly unit
scale (procedural clips: mean ~0, std ~1):

    latent = (pixel / 255 - SHIFT) / SCALE          SHIFT = 0.3, SCALE = 0.2
    pixel  = round(clamp((latent * SCALE + SHIFT) * 255, 0, 255))

so uint8 -> latent -> uint8 is exact (the float32 error is ~1e-5 of a grey level). One latent
frame is one video frame (`ModelConfig.frames_per_latent = 1`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SHIFT = 0.3
"""Pixel value (in [0, 1]) that maps to latent 0 (about the mean pixel of the clips)."""
SCALE = 0.2
"""Pixel units per latent unit (about the pixel std): latents span [-1.5, 3.5]."""


class PixelAE:
    """`Decoder` for the tiny preset: pixel-unshuffle by `factor` plus a fixed affine map."""

    def __init__(self, factor: int = 4) -> None:
        self.factor = factor

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames [F, H, W, 3] -> float32 latents [3 * factor^2, F, H/factor, W/factor]."""
        if frames.dtype != torch.uint8 or frames.dim() != 4 or frames.shape[-1] != 3:
            raise ValueError(
                f"frames must be uint8 [F, H, W, 3], got {frames.dtype} {tuple(frames.shape)}"
            )
        x = frames.permute(0, 3, 1, 2).float() / 255.0
        x = F.pixel_unshuffle((x - SHIFT) / SCALE, self.factor)  # [F, C, h, w]
        return x.transpose(0, 1).contiguous()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents [C, F, h, w] -> uint8 frames [F, h * factor, w * factor, 3]."""
        if latents.dim() != 4 or latents.shape[0] != 3 * self.factor**2:
            raise ValueError(
                f"latents {tuple(latents.shape)}: expected [{3 * self.factor**2}, F, h, w]"
            )
        x = F.pixel_shuffle(latents.float().transpose(0, 1), self.factor)  # [F, 3, H, W]
        pixels = ((x * SCALE + SHIFT) * 255.0).round().clamp(0, 255).to(torch.uint8)
        return pixels.permute(0, 2, 3, 1).contiguous()
