"""The fused paged read's contract and its pure-torch reference: decode + RoPE + gather.

One call reads, for one layer, every page of a batch (any mix of bf16 and QVG pages, in any
order, any arena slots) into a varlen workspace of post-RoPE bf16 keys and values:

    arena (flat uint8):  | ... page item | ... | codebook item | ... |
    one page item:       [layer 0: K slice, V slice][layer 1: K, V] ...   (slice = PageFormat)
    PagedBatch (per page p, int64):  src[p] arena byte of the item, book[p] its codebook's byte
                                     (0 for bf16), kind[p] 0 = bf16 / 1 = formats[1] / ...,
                                     dst[p] first workspace row, pos[p] stream position of token 0
    workspace ws [2, rows, H, D] bf16:  ws[0, dst[p] + t] = rope(K_p[t], pos[p] + t)
                                        ws[1, dst[p] + t] = V_p[t]

Keys stay pre-RoPE in the pages (the same content quantizes alike wherever it sits); the read
rotates them with an `AxialRope`: channel pair i turns by coord_i * inv_freq[i], where
coord_i = (position // div[a]) % mod[a] on axis a = axis[i]. Wan's 3D RoPE has three axes
(frame, row, col); a plain 1D RoPE has one. Sinks and dropped middles are only page lists.

Bytes moved per layer (reference and kernel alike): each page's K and V slices read once,
2 * pages * T * H * D * 2 bytes written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from .container import Encoded
from .qvg_ref import decode as qvg_decode
from .spec import CodecSpec, Method

UNBOUNDED = 1 << 40
"""`mod` of an axis without wrap-around (the frame axis)."""
LO_ROWS = 256
"""Rows of the low table of the two-level cos/sin tables: coord = hi * LO_ROWS + lo."""
HI_ROWS = 1024
"""Rows of the high table: coordinates below LO_ROWS * HI_ROWS (262,144) are exact."""


def rotate_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [N, H, D] with channel pairs (2i, 2i + 1) rotated by cos / sin [N, D/2] (product in
    fp32, result in x's dtype)."""
    x0, x1 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos[:, None], sin[:, None]
    return torch.stack([x0 * c - x1 * s, x0 * s + x1 * c], dim=-1).flatten(-2).to(x.dtype)


@dataclass(frozen=True, slots=True)
class AxialRope:
    """A rotary embedding whose channel pairs (2i, 2i+1) each follow one position axis.

    Example, Wan2.1 (head_dim 128, 30 x 52 token grid): pairs 0-21 turn with the frame
    (div 1560), pairs 22-42 with the row (div 52, mod 30), pairs 43-63 with the column
    (div 1, mod 52), each at 10000^(-2j/part) for its j-th pair inside its part.
    """

    inv_freq: tuple[float, ...]
    """Angle per unit of coordinate, one per channel pair (D/2 values)."""
    axis: tuple[int, ...]
    """Which axis each pair reads (D/2 values in 0 .. len(div) - 1)."""
    div: tuple[int, ...]
    """Per axis: coordinate = (position // div) % mod."""
    mod: tuple[int, ...]
    """Per axis (UNBOUNDED: no wrap-around)."""

    def __post_init__(self) -> None:
        if len(self.inv_freq) != len(self.axis):
            raise ValueError("AxialRope: inv_freq and axis need one entry per channel pair")
        if not 1 <= len(self.div) == len(self.mod) <= 3:
            raise ValueError("AxialRope: div and mod need one entry per axis (1 to 3 axes)")
        if any(a < 0 or a >= len(self.div) for a in self.axis):
            raise ValueError(f"AxialRope.axis: values must be in 0..{len(self.div) - 1}")

    @property
    def head_dim(self) -> int:
        return 2 * len(self.inv_freq)

    @classmethod
    def one_d(cls, head_dim: int, base: float = 10000.0) -> AxialRope:
        """Plain 1D RoPE (`paged_attention.rope_1d`): pair i turns by pos * base^(-2i/D)."""
        inv = tuple(base ** (-2 * i / head_dim) for i in range(head_dim // 2))
        return cls(inv, (0,) * (head_dim // 2), (1,), (UNBOUNDED,))

    def coords(self, positions: torch.Tensor) -> torch.Tensor:
        """int64 [T, axes] coordinates of stream positions [T]."""
        div = torch.tensor(self.div, device=positions.device)
        mod = torch.tensor(self.mod, device=positions.device)
        return (positions.to(torch.int64)[:, None] // div) % mod

    def angles(self, positions: torch.Tensor) -> torch.Tensor:
        """float64 [T, D/2] rotation angles."""
        axis = torch.tensor(self.axis, device=positions.device)
        inv = torch.tensor(self.inv_freq, dtype=torch.float64, device=positions.device)
        return self.coords(positions)[:, axis].to(torch.float64) * inv

    def rotate(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x [T, H, D] rotated at positions [T] (angles in float64, product in fp32)."""
        ang = self.angles(positions.to(x.device))
        return rotate_pairs(x, ang.cos().float(), ang.sin().float())

    def tables(self, device) -> torch.Tensor:
        """fp32 [4, rows, D/2]: cos/sin of lo * inv (rows < LO_ROWS), then cos/sin of
        hi * LO_ROWS * inv (rows < HI_ROWS), from float64 angles; cos(a + b) recombines them."""
        inv = torch.tensor(self.inv_freq, dtype=torch.float64)
        lo = torch.arange(LO_ROWS, dtype=torch.float64)[:, None] * inv
        hi = torch.arange(HI_ROWS, dtype=torch.float64)[:, None] * (LO_ROWS * inv)
        out = torch.zeros(4, HI_ROWS, len(self.inv_freq), dtype=torch.float64)
        out[0, :LO_ROWS], out[1, :LO_ROWS] = lo.cos(), lo.sin()
        out[2], out[3] = hi.cos(), hi.sin()
        return out.float().to(device)


class PageFormat(NamedTuple):
    """Where one format's tensors sit inside a page's (layer, kv) slice and its codebook's.

    `fields` / `book_fields`: name -> (byte offset in the slice, dtype, shape), e.g. for
    qvg-int2 at H=12, T=1560, D=128: codes (0, uint8, [12, 1560, 32]), scales (599040,
    float8_e4m3fn, [12, 1560, 2]), ids.0 (636480, uint8, [12, 1560]).
    """

    spec: CodecSpec
    slice_bytes: int
    fields: dict[str, tuple[int, torch.dtype, tuple[int, ...]]]
    book_slice_bytes: int = 0
    book_fields: dict[str, tuple[int, torch.dtype, tuple[int, ...]]] | None = None


class PagedBatch(NamedTuple):
    """One batch's page list (all streams, token order within each stream), int64 tensors
    [pages] on the arena's device; built once per step, read by every layer."""

    src: torch.Tensor
    book: torch.Tensor
    kind: torch.Tensor
    dst: torch.Tensor
    pos: torch.Tensor


def _typed(arena: torch.Tensor, off: int, dtype: torch.dtype, shape) -> torch.Tensor:
    n = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    return arena[off : off + n].view(dtype).view(shape)


def _slice(arena, base: int, fields) -> dict[str, torch.Tensor]:
    return {name: _typed(arena, base + off, dt, shp) for name, (off, dt, shp) in fields.items()}


def decode_slice(arena: torch.Tensor, fmt: PageFormat, src: int, book: int, layer: int, half: int):
    """[H, T, D] of one page's (layer, half) slice, through the codec reference: bf16 pages as
    stored, QVG pages in fp32 (rounded once, after RoPE, as the kernel does)."""
    base = src + (2 * layer + half) * fmt.slice_bytes
    t = _slice(arena, base, fmt.fields)
    if fmt.spec.method is Method.BF16:
        return t["values"]
    assert fmt.book_fields is not None
    t.update(_slice(arena, book + (2 * layer + half) * fmt.book_slice_bytes, fmt.book_fields))
    h, tokens = t["codes"].shape[:2]
    d = t["centroids.0"].shape[-1]
    enc = Encoded(fmt.spec, (1, h, tokens, d), "kv"[half], {n: x[None] for n, x in t.items()})
    return qvg_decode(enc, torch.float32)[0]


def paged_read_ref(
    arena: torch.Tensor,
    formats: list[PageFormat],
    batch: PagedBatch,
    layer: int,
    ws: torch.Tensor,
    rope: AxialRope | None,
) -> torch.Tensor:
    """Write every page of `batch` (layer `layer`) into ws [2, rows, H, D] bf16 (keys rotated
    by `rope` at pos[p] + t, None: unrotated); returns ws. formats[kind] lays out kind's pages."""
    cols = [x.tolist() for x in batch]
    for src, book, kind, dst, pos in zip(*cols, strict=True):
        fmt = formats[kind]
        for half in range(2):
            x = decode_slice(arena, fmt, src, book, layer, half).transpose(0, 1)  # [T, H, D]
            if half == 0 and rope is not None:
                p = torch.arange(pos, pos + x.shape[0], device=x.device)
                x = rope.rotate(x.float(), p)  # one rounding, into ws's dtype (as the kernel)
            ws[half, dst : dst + x.shape[0]] = x
    return ws
