"""Video-like K/V for codec benchmarks, made on the fly from photographs bundled with
scikit-image (no downloads).

A camera pans (and slowly zooms) over an upscaled photograph; each latent frame is a crop of
`grid * 16` pixels, patchified into 16x16x3 patches (one token each, e.g. 30 x 52 = 1,560
tokens per frame as in Self-Forcing's 480x832 video), then projected to heads by a fixed,
seeded two-layer MLP. K gets per-channel scales with a few outlier channels and a per-channel
bias (as real pre-RoPE keys have); V gets milder scales. Consecutive frames share most content,
so tokens cluster by semantics the way real video K/V do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IMAGES = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry")


def _photo(name: str) -> torch.Tensor:
    from skimage import data

    img = getattr(data, name)()
    t = torch.from_numpy(img.copy()).float() / 255.0
    if t.dim() == 2:
        t = t[..., None].expand(-1, -1, 3)
    return t[..., :3].permute(2, 0, 1).contiguous()  # [3, h, w]


def _frames(img: torch.Tensor, frames: int, grid: tuple[int, int], seed: int) -> torch.Tensor:
    """[frames, 3, gh*16, gw*16] crops of a pan + slow zoom over `img`."""
    gh, gw = grid
    ph, pw = gh * 16, gw * 16
    scale = max((ph + 8 * frames) / img.shape[1], (pw + 8 * frames) / img.shape[2], 1.0) * 1.15
    big = F.interpolate(img[None], scale_factor=scale, mode="bilinear", align_corners=False)[0]
    gen = torch.Generator().manual_seed(seed)
    dy, dx = (torch.rand(2, generator=gen) * 2 - 1).tolist()
    out = []
    for f in range(frames):
        zoom = 1.0 - 0.004 * f
        h, w = int(ph * zoom), int(pw * zoom)
        y0 = int((big.shape[1] - h) / 2 + dy * 3 * f)
        x0 = int((big.shape[2] - w) / 2 + dx * 5 * f)
        y0 = min(max(y0, 0), big.shape[1] - h)
        x0 = min(max(x0, 0), big.shape[2] - w)
        crop = big[:, y0 : y0 + h, x0 : x0 + w]
        out.append(
            F.interpolate(crop[None], size=(ph, pw), mode="bilinear", align_corners=False)[0]
        )
    return torch.stack(out)


def video_like_kv(
    frames: int = 24,
    grid: tuple[int, int] = (30, 52),
    heads: int = 12,
    head_dim: int = 128,
    seed: int = 0,
    image: str = "astronaut",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(k, v), each fp32 [1, heads, frames * grid[0] * grid[1], head_dim], on the CPU."""
    if image not in IMAGES:
        raise ValueError(f"image {image!r}: choose one of {IMAGES}")
    video = _frames(_photo(image), frames, grid, seed)  # [F, 3, ph, pw]
    patches = F.unfold(video, kernel_size=16, stride=16).transpose(1, 2)  # [F, T, 768]
    x = patches.reshape(-1, 768)
    x = (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True) + 1e-3)
    gen = torch.Generator().manual_seed(seed + 1)
    width = heads * head_dim

    def mlp() -> torch.Tensor:
        w1 = torch.randn(768, 512, generator=gen) / 768**0.5
        w2 = torch.randn(512, width, generator=gen) / 512**0.5
        return F.gelu(x @ w1) @ w2

    ch_k = torch.exp(torch.randn(width, generator=gen) * 0.4)
    outliers = torch.randperm(width, generator=gen)[: width // 32]
    ch_k[outliers] *= 6.0  # a few large channels, as in real keys
    k = mlp() * ch_k + torch.randn(width, generator=gen) * 0.8
    v = mlp() * torch.exp(torch.randn(width, generator=gen) * 0.2)

    def heads_first(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(1, -1, heads, head_dim).transpose(1, 2).contiguous()

    return heads_first(k), heads_first(v)
