"""Byte layouts of pool items: one page (all layers, K and V) and one span codebook, per format.

The tensors themselves (names, shapes, dtypes, bytes) are the codec's: `kernels.page_layout`.
This module arranges them in the pool. A page of `page_tokens` (T) tokens holds, for every
layer and for K then V, the codec's per-token fields for T tokens; a span codebook holds its
per-span fields (k-means centroids of every stage, the fp32 scale-of-scales):

    one item:   [layer 0: K slice | V slice][layer 1: K | V] ...
    one slice:  the fields in `codec_layout` order, back to back, padded to ALIGN bytes

    bf16 page      values [H, T, D] bf16 per slice              2*L*2*H*T*D bytes
    qvg page       codes, scales (, zeros), ids.t per slice     (see kernels.page_layout)
    qvg codebook   centroids.t, scale_of_scales per slice

Sizes are exact (`page_bytes`, `codebook_bytes`), so the scheduler's `PoolLayout` reserves
precisely what the codec writes; `split_page` / `split_codebook` view an item's bytes as the
named tensors without copying.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from kernels.page_layout import CodecLayout, TensorField, codec_layout
from kernels.spec import CodecSpec, Method, get_spec

BF16 = "bf16"


@dataclass(frozen=True, slots=True)
class KVShape:
    """Shape of one model's KV cache: what one page holds."""

    layers: int
    """Transformer blocks with a self-attention KV cache."""
    heads: int
    """KV heads per layer."""
    head_dim: int
    """Channels per head (a multiple of every codec's group size)."""
    page_tokens: int
    """Tokens per page; the default is one latent frame (1,560 for Self-Forcing 480x832)."""

    def __post_init__(self) -> None:
        for name in ("layers", "heads", "head_dim", "page_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"KVShape.{name} = {getattr(self, name)}; it must be >= 1")


def _layout(spec: CodecSpec, kv: KVShape) -> CodecLayout:
    return codec_layout(spec, kv.heads, kv.page_tokens, kv.head_dim)


def page_fields(spec: CodecSpec, kv: KVShape) -> tuple[TensorField, ...]:
    """The per-token tensors of one (layer, kv) slice of a page: [H, T, ...] each."""
    if spec.method not in (Method.BF16, Method.QVG):
        raise ValueError(f"pool format {spec.name!r}: the pool stores bf16 and qvg-* pages")
    return _layout(spec, kv).token_fields


def codebook_fields(spec: CodecSpec, kv: KVShape) -> tuple[TensorField, ...]:
    """The per-span tensors of one (layer, kv) slice of a codebook (none for bf16)."""
    if spec.method is not Method.QVG:
        return ()
    return _layout(spec, kv).span_fields


ALIGN = 16
"""Every (layer, kv) slice starts on a 16-byte boundary so typed views (bf16, fp32) of pool
bytes are aligned; the padding (0 for Self-Forcing shapes) is counted in the item's bytes."""


def slice_bytes(fields: Sequence[TensorField]) -> int:
    """Bytes of one (layer, kv) slice, padded to ALIGN."""
    return -(-sum(f.nbytes for f in fields) // ALIGN) * ALIGN


def page_bytes(spec: CodecSpec | str, kv: KVShape) -> int:
    """Exact bytes of one page: every layer, K and V, all per-token metadata."""
    return 2 * kv.layers * slice_bytes(page_fields(get_spec(spec), kv))


def codebook_bytes(spec: CodecSpec | str, kv: KVShape) -> int:
    """Exact bytes of one span codebook (0 for formats without one)."""
    fields = codebook_fields(get_spec(spec), kv)
    return 2 * kv.layers * slice_bytes(fields) if fields else 0


def split_slices(rows: torch.Tensor, fields: Sequence[TensorField]) -> dict[str, torch.Tensor]:
    """Typed tensors [N, *shape] of N gathered (layer, kv) slices `rows` [N, slice_bytes]."""
    out, pos = {}, 0
    for f in fields:
        raw = rows[:, pos : pos + f.nbytes].contiguous()
        out[f.name] = raw.view(f.dtype).view(rows.shape[0], *f.shape)
        pos += f.nbytes
    return out


def stacked(item: torch.Tensor, fields: Sequence[TensorField], kv: KVShape) -> dict:
    """{name: view [2 * layers, *shape]} into the uint8 bytes `item` (no copy): row 2l + h is
    layer l's K (h = 0) or V (h = 1) slice, so one copy fills a field for every layer."""
    if item.dtype != torch.uint8 or item.dim() != 1:
        raise ValueError("pool items are flat uint8 byte views")
    step = slice_bytes(fields)
    if item.numel() != 2 * kv.layers * step:
        raise ValueError(f"item holds {item.numel()} bytes, its layout {2 * kv.layers * step}")
    rows, out, pos = item.view(2 * kv.layers, step), {}, 0
    for f in fields:
        out[f.name] = rows[:, pos : pos + f.nbytes].view(f.dtype).view(rows.shape[0], *f.shape)
        pos += f.nbytes
    return out


def _split(
    item: torch.Tensor, fields: Sequence[TensorField], kv: KVShape
) -> list[list[dict[str, torch.Tensor]]]:
    """Views [layer][kv] -> {name: tensor} into the uint8 bytes `item` (no copy)."""
    rows = stacked(item, fields, kv)
    return [
        [{name: v[2 * layer + half] for name, v in rows.items()} for half in range(2)]
        for layer in range(kv.layers)
    ]


def split_page(item: torch.Tensor, spec: CodecSpec | str, kv: KVShape):
    """[layer][kv] -> {name: view} of one page's bytes."""
    return _split(item, page_fields(get_spec(spec), kv), kv)


def split_codebook(item: torch.Tensor, spec: CodecSpec | str, kv: KVShape):
    """[layer][kv] -> {name: view} of one codebook's bytes."""
    return _split(item, codebook_fields(get_spec(spec), kv), kv)
