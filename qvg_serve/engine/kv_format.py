"""Byte layouts of pool items: one page (all layers, K and V) and one span codebook, per format.

A page of `page_tokens` (T) tokens holds, for every layer and for K then V, the per-token part
of the codec's output; the span codebook holds the per-span part (k-means centroids of every
stage and the fp32 scale-of-scales):

    bf16 page      [layers, 2, H, T, D] bf16                          2*L*2*H*T*D bytes
    qvg page       per (layer, kv): codes  [H, T, D*bits/8]  uint8
                                    scales [H, T, D/G]       scale dtype
                                    zeros  [H, T, D/G]       (asymmetric only)
                                    ids.t  [H, T]            uint8, one per stage t
    qvg codebook   per (layer, kv): centroids.t [H, C, D]    bf16, one per stage t
                                    scale_of_scales [H]      fp32 (fp8 scales only)

Sizes are exact (`page_bytes`, `codebook_bytes`), so the scheduler's `PoolLayout` reserves
precisely what the codec writes; `split_page` / `split_codebook` view an item's bytes as the
named tensors without copying.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

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


def _elem(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def page_fields(spec: CodecSpec, kv: KVShape) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
    """(name, dtype, shape) of the per-token tensors of one (layer, kv) slice of a page."""
    if spec.method is Method.BF16:
        return [("values", torch.bfloat16, (kv.heads, kv.page_tokens, kv.head_dim))]
    if spec.method is not Method.QVG:
        raise ValueError(f"pool format {spec.name!r}: the pool stores bf16 and qvg-* pages")
    qs, ks = spec.quant, spec.kmeans
    assert qs is not None and ks is not None
    h, t, d = kv.heads, kv.page_tokens, kv.head_dim
    if d % qs.group_size:
        raise ValueError(f"head_dim {d} is not a multiple of {spec.name}'s group {qs.group_size}")
    fields = [("codes", torch.uint8, (h, t, d * qs.bits // 8))]
    fields.append(("scales", qs.scale_dtype.torch_dtype, (h, t, d // qs.group_size)))
    if not qs.symmetric:
        fields.append(("zeros", qs.scale_dtype.torch_dtype, (h, t, d // qs.group_size)))
    fields += [(f"ids.{i}", ks.id_dtype, (h, t)) for i in range(ks.stages)]
    return fields


def codebook_fields(spec: CodecSpec, kv: KVShape) -> list[tuple[str, torch.dtype, tuple]]:
    """(name, dtype, shape) of the per-span tensors of one (layer, kv) slice of a codebook."""
    if spec.method is not Method.QVG:
        return []
    qs, ks = spec.quant, spec.kmeans
    assert qs is not None and ks is not None
    fields = [
        (f"centroids.{i}", ks.centroid_dtype, (kv.heads, ks.centroids, kv.head_dim))
        for i in range(ks.stages)
    ]
    if qs.scale_dtype.value.startswith("fp8"):
        fields.append(("scale_of_scales", torch.float32, (kv.heads,)))
    return fields


def _slice_bytes(fields) -> int:
    total = 0
    for _, dtype, shape in fields:
        n = _elem(dtype)
        for s in shape:
            n *= s
        total += n
    return total


ALIGN = 16
"""Every (layer, kv) slice starts on a 16-byte boundary so typed views (bf16, fp32) of pool
bytes are aligned; the padding (0 for Self-Forcing shapes) is counted in the item's bytes."""


def slice_bytes(fields) -> int:
    """Bytes of one (layer, kv) slice, padded to ALIGN."""
    return -(-_slice_bytes(fields) // ALIGN) * ALIGN


def page_bytes(spec: CodecSpec | str, kv: KVShape) -> int:
    """Exact bytes of one page: every layer, K and V, all per-token metadata."""
    return 2 * kv.layers * slice_bytes(page_fields(get_spec(spec), kv))


def codebook_bytes(spec: CodecSpec | str, kv: KVShape) -> int:
    """Exact bytes of one span codebook (0 for formats without one)."""
    fields = codebook_fields(get_spec(spec), kv)
    return 2 * kv.layers * slice_bytes(fields) if fields else 0


def split_slices(rows: torch.Tensor, fields) -> dict[str, torch.Tensor]:
    """Typed tensors [N, *shape] of N gathered (layer, kv) slices `rows` [N, slice_bytes]."""
    out, pos = {}, 0
    for name, dtype, shape in fields:
        n = _slice_bytes([(name, dtype, shape)])
        out[name] = rows[:, pos : pos + n].contiguous().view(dtype).view(rows.shape[0], *shape)
        pos += n
    return out


def _split(item: torch.Tensor, fields, kv: KVShape) -> list[list[dict[str, torch.Tensor]]]:
    """Views [layer][kv] -> {name: tensor} into the uint8 bytes `item` (no copy)."""
    if item.dtype != torch.uint8 or item.dim() != 1:
        raise ValueError("pool items are flat uint8 byte views")
    step = slice_bytes(fields)
    if item.numel() != 2 * kv.layers * step:
        raise ValueError(f"item holds {item.numel()} bytes, its layout {2 * kv.layers * step}")
    out = []
    for layer in range(kv.layers):
        pair = []
        for half in range(2):
            start, views = (2 * layer + half) * step, {}
            for name, dtype, shape in fields:
                n = _slice_bytes([(name, dtype, shape)])
                views[name] = item[start : start + n].view(dtype).view(shape)
                start += n
            pair.append(views)
        out.append(pair)
    return out


def split_page(item: torch.Tensor, spec: CodecSpec | str, kv: KVShape):
    """[layer][kv] -> {name: view} of one page's bytes."""
    return _split(item, page_fields(get_spec(spec), kv), kv)


def split_codebook(item: torch.Tensor, spec: CodecSpec | str, kv: KVShape):
    """[layer][kv] -> {name: view} of one codebook's bytes."""
    return _split(item, codebook_fields(get_spec(spec), kv), kv)
