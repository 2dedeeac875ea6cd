"""Hooks around the DiT: text in (`TextEncoder`), pixels out (`Decoder`).

qvg-serve ships neither umT5-XXL nor the Wan VAE; a deployment that has them plugs them in
through these protocols. Without a VAE, frames come from `LatentPreview`, a cheap fixed map
that shows motion and layout, not the real colours or detail.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

from qvg_serve.models.base import ModelConfig


class TextEncoder(Protocol):
    """Prompts -> precomputed text embeddings for `ChunkInput.text`."""

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """[B, text_len, text_dim] (umT5-XXL for Wan: [B, 512, 4096], zero past each prompt)."""
        ...


class Decoder(Protocol):
    """Latents -> RGB frames."""

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents [C, F, H, W] -> uint8 frames [frames, height, width, 3]."""
        ...


def default_preview_factors(channels: int) -> torch.Tensor:
    """[channels, 3]: channel c feeds colour c % 3, each colour the mean of its channels."""
    factors = torch.zeros(channels, 3)
    for c in range(channels):
        factors[c, c % 3] = 1.0
    return factors / factors.sum(0, keepdim=True).clamp(min=1)


class LatentPreview:
    """A documented stand-in for the Wan VAE decoder (latent preview, no learned weights).

    Per latent pixel: rgb = tanh(gain * (latents @ factors + bias)), mapped from [-1, 1] to
    [0, 255]. `channels` is the latent channel count or a ModelConfig (its in_channels).
    The default `factors` is a false-colour map: channel c adds to colour c % 3 and each
    colour averages its channels (Wan latents are roughly zero-mean, unit-scale per
    channel after the VAE's normalisation, so mid-grey is the neutral latent). Pass `factors`
    [C, 3] and `bias` [3] fitted to a VAE (least squares of decoded RGB on latents) for
    approximate real colours.

    Upsampling mimics the Wan VAE's geometry: each latent frame becomes `temporal` (4) video
    frames by repetition and each latent pixel a `spatial` x `spatial` (8 x 8) block by bilinear
    interpolation. (The real VAE decodes the first latent frame of a clip to 1 frame and each
    later one to 4; the preview gives every latent frame 4, so chunks stream uniformly.)
    """

    def __init__(
        self,
        channels: int | ModelConfig = 16,
        factors: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
        gain: float = 1.0,
        temporal: int = 4,
        spatial: int = 8,
    ) -> None:
        if isinstance(channels, ModelConfig):
            channels = channels.in_channels
        self.factors = default_preview_factors(channels) if factors is None else factors.float()
        if self.factors.shape != (channels, 3):
            raise ValueError(f"factors {tuple(self.factors.shape)}: expected ({channels}, 3)")
        self.bias = torch.zeros(3) if bias is None else bias.float()
        self.gain, self.temporal, self.spatial = gain, temporal, spatial

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents [C, F, H, W] -> uint8 [F * temporal, H * spatial, W * spatial, 3]."""
        if latents.dim() != 4 or latents.shape[0] != self.factors.shape[0]:
            raise ValueError(
                f"latents {tuple(latents.shape)}: expected [C={self.factors.shape[0]}, F, H, W]"
            )
        x = latents.float()
        rgb = torch.einsum("cfhw,ck->fkhw", x, self.factors.to(x.device))
        rgb = torch.tanh(self.gain * (rgb + self.bias.to(x.device)[None, :, None, None]))
        size = (rgb.shape[2] * self.spatial, rgb.shape[3] * self.spatial)
        rgb = F.interpolate(rgb, size=size, mode="bilinear", align_corners=False)
        rgb = rgb.repeat_interleave(self.temporal, dim=0)
        pixels = ((rgb + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        return pixels.permute(0, 2, 3, 1).contiguous()
