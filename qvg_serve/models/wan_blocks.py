"""Building blocks of the Wan2.1 DiT, with Wan's parameter names (so real checkpoints load).

Precision follows Wan's autocast regions: the residual stream, the timestep path, the
modulation and the head run in fp32; Linear layers and attention run in the module's dtype
(bf16 on GPU); LayerNorm/RMSNorm normalise in fp32.

A batch is a flat token matrix x [N, dim] holding the chunks one after another; `Segments`
knows which rows belong to which chunk, so per-chunk vectors (modulation, timestep) apply to
their own rows only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kernels.paged_read_ref import UNBOUNDED, AxialRope


class Segments:
    """Rows of x [N, dim] per chunk: chunk b owns `lengths[b]` consecutive rows."""

    def __init__(self, lengths: Sequence[int], device: torch.device) -> None:
        self.lengths = list(lengths)
        self.uniform = len(set(self.lengths)) == 1
        # Uniform batches broadcast through a [B, n, dim] view (no per-token copy of e).
        counts = torch.tensor(self.lengths, device=device)
        self.index = None if self.uniform else torch.repeat_interleave(counts)

    def _apply(self, x: torch.Tensor, fn, *per_chunk: torch.Tensor) -> torch.Tensor:
        if self.uniform:
            xb = x.view(len(self.lengths), -1, x.shape[-1])
            return fn(xb, *(e[:, None] for e in per_chunk)).view_as(x)
        return fn(x, *(e[self.index] for e in per_chunk))

    def modulate(self, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """x * (1 + scale) + shift, with shift/scale [B, dim] per chunk (fp32)."""
        return self._apply(x, lambda a, s, c: a * (1 + c) + s, shift, scale)

    def gated_add(self, x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """x + y * gate (fp32), gate [B, dim] per chunk."""
        return x + self._apply(y.float(), lambda a, g: a * g, gate)


def linear32(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """`layer` in fp32 whatever its dtype (Wan runs the time path and head under fp32 autocast)."""
    bias = None if layer.bias is None else layer.bias.float()
    return F.linear(x.float(), layer.weight.float(), bias)


def sinusoidal_embedding(dim: int, t: torch.Tensor) -> torch.Tensor:
    """Timesteps t [B] -> [B, dim] fp32: cos then sin of t * 10000^(-i/half), in float64."""
    half = dim // 2
    t64 = t.to(torch.float64)
    freqs = torch.pow(10000.0, -torch.arange(half, device=t.device, dtype=torch.float64) / half)
    angles = torch.outer(t64, freqs)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1).float()


class WanRMSNorm(nn.Module):
    """RMSNorm over the last dim: normalise in fp32, back to x's dtype, times `weight`."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return normed.to(x.dtype) * self.weight


class WanLayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32; returns fp32 (it feeds the fp32 modulation)."""

    def __init__(self, dim: int, eps: float, affine: bool = False) -> None:
        super().__init__(dim, eps=eps, elementwise_affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps)


class WanRope(nn.Module):
    """Wan's 3D RoPE on a token stream: head_dim splits into (time, row, col) parts of
    d - 4*(d//6), 2*(d//6), 2*(d//6) channels; each part rotates adjacent channel pairs
    (2i, 2i+1) by position * 10000^(-2i/part)."""

    def __init__(self, head_dim: int, grid: tuple[int, int]) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"head_dim {head_dim} must be even for RoPE")
        third = head_dim // 6
        parts = (head_dim - 4 * third, 2 * third, 2 * third)
        cpu = torch.device("cpu")  # built on the CPU even under a meta/cuda device context
        inv = [
            10000.0 ** -(torch.arange(0, p, 2, dtype=torch.float64, device=cpu) / p) for p in parts
        ]
        axis = [torch.full((p // 2,), a, device=cpu) for a, p in enumerate(parts)]
        self.rows, self.cols = grid
        # Plain attributes, not buffers: module.to(bf16) must not round the frequencies.
        self._tables = {"cpu": (torch.cat(inv).cpu(), torch.cat(axis).cpu())}

    def axial(self) -> AxialRope:
        """The same rotation as an `AxialRope` (what the fused paged read applies)."""
        inv, axis = self._tables["cpu"]
        tpf = self.rows * self.cols
        return AxialRope(
            tuple(inv.tolist()), tuple(axis.tolist()), (tpf, self.cols, 1),
            (UNBOUNDED, self.rows, self.cols),
        )  # fmt: skip

    def tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(inv_freq [D/2] float64, axis [D/2] in 0/1/2) on `device` (cached per device)."""
        key = str(device)
        if key not in self._tables:
            inv, axis = self._tables["cpu"]
            self._tables[key] = (inv.to(device), axis.to(device))
        return self._tables[key]

    def coords(self, positions: torch.Tensor) -> torch.Tensor:
        """Stream token index [T] -> (frame, row, col) [T, 3]."""
        tpf = self.rows * self.cols
        return torch.stack(
            [positions // tpf, (positions % tpf) // self.cols, positions % self.cols], -1
        )

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x [T, H, D] rotated at stream positions [T]; same dtype as x."""
        inv_freq, axis = self.tables(x.device)
        coords = self.coords(positions.to(x.device)).to(torch.float64)
        angles = (coords[:, axis] * inv_freq)[:, None]  # [T, 1, D/2]
        cos, sin = angles.cos().float(), angles.sin().float()
        x0, x1 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
        out = torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1)
        return out.flatten(-2).to(x.dtype)


class WanAttention(nn.Module):
    """q, k, v, o projections with RMSNorm on q and k (over the full dim, before the head split)."""

    def __init__(self, dim: int, heads: int, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = WanRMSNorm(dim, eps)
        self.norm_k = WanRMSNorm(dim, eps)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.heads, -1))

    def qkv(self, x: torch.Tensor, source: torch.Tensor | None = None):
        """q from x; k, v from `source` (x itself for self-attention) -> [..., H, D] each."""
        source = x if source is None else source
        q = self.split(self.norm_q(self.q(x)))
        k = self.split(self.norm_k(self.k(source)))
        return q, k, self.split(self.v(source))


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask=None) -> torch.Tensor:
    """q [n, H, D], k/v [m, H, D] -> [n, H, D]; softmax scale 1/sqrt(D) as in Wan."""
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=mask
    )
    return out.transpose(0, 1)


def cross_attention(
    attn: WanAttention, x: torch.Tensor, segs: Segments, context: torch.Tensor
) -> torch.Tensor:
    """Each chunk's rows of x [N, dim] attend to their own text context [B, L, dim] (no RoPE,
    no mask: Wan T2V attends to all text_len padded tokens)."""
    q, k, v = attn.qkv(x, context)
    if segs.uniform:
        b = len(segs.lengths)
        qb = q.view(b, -1, *q.shape[1:]).transpose(1, 2)
        out = F.scaled_dot_product_attention(qb, k.transpose(1, 2), v.transpose(1, 2))
        out = out.transpose(1, 2).reshape(x.shape)
    else:
        parts = q.split(segs.lengths)
        out = torch.cat([sdpa(qi, k[i], v[i]) for i, qi in enumerate(parts)]).flatten(1)
    return attn.o(out)


class WanBlock(nn.Module):
    """One DiT block: modulated self-attention (through the context), cross-attention to
    text, modulated FFN. `modulation` [1, 6, dim] is added to the time projection:
    (shift, scale, gate) for self-attention, then (shift, scale, gate) for the FFN."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, eps: float) -> None:
        super().__init__()
        self.norm1 = WanLayerNorm(dim, eps)
        self.self_attn = WanAttention(dim, heads, eps)
        self.norm3 = WanLayerNorm(dim, eps, affine=True)
        self.cross_attn = WanAttention(dim, heads, eps)
        self.norm2 = WanLayerNorm(dim, eps)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(ffn_dim, dim)
        )
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(self, x, e0, segs: Segments, context, ctx, layer: int) -> torch.Tensor:
        """x [N, dim] fp32, e0 [B, 6, dim] fp32 time projection, context [B, L, dim]."""
        e = (self.modulation.float() + e0).unbind(1)
        dtype = self.modulation.dtype
        h = segs.modulate(self.norm1(x), e[0], e[1]).to(dtype)
        q, k, v = self.self_attn.qkv(h)
        y = self.self_attn.o(ctx.self_attention(layer, q, k, v).flatten(1))
        x = segs.gated_add(x, y, e[2])
        x = x + cross_attention(self.cross_attn, self.norm3(x).to(dtype), segs, context).float()
        h = segs.modulate(self.norm2(x), e[3], e[4]).to(dtype)
        return segs.gated_add(x, self.ffn(h), e[5])


class WanHead(nn.Module):
    """Final modulated LayerNorm + Linear to prod(patch) * out_channels, all in fp32."""

    def __init__(self, dim: int, out_dim: int, patch: tuple[int, int, int], eps: float) -> None:
        super().__init__()
        self.norm = WanLayerNorm(dim, eps)
        self.head = nn.Linear(dim, math.prod(patch) * out_dim)
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor, segs: Segments) -> torch.Tensor:
        """x [N, dim] fp32, e [B, dim] fp32 time embedding -> [N, prod(patch) * C] fp32."""
        shift, scale = (self.modulation.float() + e[:, None]).unbind(1)
        return linear32(self.head, segs.modulate(self.norm(x), shift, scale))


def patchify(latents: torch.Tensor, patch: tuple[int, int, int]) -> torch.Tensor:
    """[C, F, H, W] -> [tokens, C * pt * ph * pw], tokens in (frame, row, col) order and
    features in Conv3d weight order (C, pt, ph, pw): x @ conv.weight.flatten(1).T == conv(x)."""
    c, f, h, w = latents.shape
    pt, ph, pw = patch
    x = latents.reshape(c, f // pt, pt, h // ph, ph, w // pw, pw)
    return x.permute(1, 3, 5, 0, 2, 4, 6).reshape((f // pt) * (h // ph) * (w // pw), -1)


def unpatchify(
    x: torch.Tensor, grid: tuple[int, int, int], patch: tuple[int, int, int]
) -> torch.Tensor:
    """Head output [tokens, pt * ph * pw * C] (Wan's order: patch offsets, then channel)
    -> [C, F, H, W]."""
    f, h, w = grid
    pt, ph, pw = patch
    x = x.reshape(f, h, w, pt, ph, pw, -1)
    return x.permute(6, 0, 3, 1, 4, 2, 5).reshape(-1, f * pt, h * ph, w * pw)
