"""The one inventory of what every codec stores: tensor names, shapes, dtypes and bytes.

`codec_layout(spec, heads, tokens, head_dim, role)` lists the tensors `kernels.codec.encode`
returns for one K or V span of shape [1, H, S, D] (without the batch dim), split in two parts:

- per-token fields (`TensorField.per_token`): dim 1 is the token axis, so a span's slice of
  tokens [a, b) is the field's slice [:, a:b]; a pool page of T tokens holds these.
- per-span fields: one per span whatever its length (centroids, scale-of-scales); a pool's
  span codebook holds these.

Example, `codec_layout("qvg-int2", heads=12, tokens=1560, head_dim=128)` (one latent frame of
Self-Forcing-1.3B, one layer, K or V):

    codes            uint8  [12, 1560, 32]   per token   599,040 B  (2 bits/value)
    scales           fp8    [12, 1560, 2]    per token    37,440 B  (one per 64 channels)
    ids.0            uint8  [12, 1560]       per token    18,720 B  (stage-0 cluster ids)
    centroids.0      bf16   [12, 256, 128]   per span    786,432 B  (stage-0 k-means)
    scale_of_scales  fp32   [12]             per span         48 B  (fp8 scales' range)
    -> token_nbytes 655,200 B (vs 4,792,320 B as bf16), span_nbytes 786,480 B.

Stage t's tensors are named `centroids.t` / `ids.t` (`stage_names`). Baselines: bf16 `values`;
fp8 `values` + per-span fp32 `scale`; rtn/quarot `codes`, `scales` (+ `zeros` asymmetric,
+ `scale_of_scales` fp8); KIVI keys are coded per channel over token groups, stored
[H, D, S_pad, ...] with S_pad = S rounded up to the group: not sliceable by token, so every
KIVI-key field is per span.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .spec import CodecSpec, Method, get_spec


def stage_names(t: int) -> tuple[str, str]:
    """(centroids, cluster ids) tensor names of k-means stage t."""
    return f"centroids.{t}", f"ids.{t}"


@dataclass(frozen=True, slots=True)
class TensorField:
    """One stored tensor of a span, without the batch dim: [H, ...]."""

    name: str
    """Key in `Encoded.tensors` (batch dim added in front)."""
    dtype: torch.dtype
    """Storage dtype."""
    shape: tuple[int, ...]
    """Shape without the batch dim; per-token fields have the token count at dim 1."""
    per_token: bool
    """True: grows with tokens (dim 1 is tokens); False: one per span (a codebook)."""

    @property
    def nbytes(self) -> int:
        n = self.dtype.itemsize
        for s in self.shape:
            n *= s
        return n


@dataclass(frozen=True, slots=True)
class CodecLayout:
    """Every tensor of one encoded [1, H, S, D] span, per-token fields first."""

    spec: CodecSpec
    heads: int
    tokens: int
    head_dim: int
    role: str
    fields: tuple[TensorField, ...]

    @property
    def token_fields(self) -> tuple[TensorField, ...]:
        return tuple(f for f in self.fields if f.per_token)

    @property
    def span_fields(self) -> tuple[TensorField, ...]:
        return tuple(f for f in self.fields if not f.per_token)

    @property
    def token_nbytes(self) -> int:
        return sum(f.nbytes for f in self.token_fields)

    @property
    def span_nbytes(self) -> int:
        return sum(f.nbytes for f in self.span_fields)

    @property
    def nbytes(self) -> int:
        """Bytes `encode` stores for this span (equals `Encoded.nbytes` at batch 1)."""
        return self.token_nbytes + self.span_nbytes


def _quant_fields(spec: CodecSpec, h: int, rows: int, cols: int, per_token: bool) -> list:
    """codes / scales (/ zeros) of group-quantizing [H, rows, cols] along cols."""
    qs = spec.quant
    assert qs is not None
    sd, ng = qs.scale_dtype.torch_dtype, cols // qs.group_size
    fields = [TensorField("codes", torch.uint8, (h, rows, cols * qs.bits // 8), per_token)]
    fields.append(TensorField("scales", sd, (h, rows, ng), per_token))
    if not qs.symmetric:
        fields.append(TensorField("zeros", sd, (h, rows, ng), per_token))
    return fields


def _sos_fields(spec: CodecSpec, h: int) -> list:
    """fp8 scales carry one fp32 scale-of-scales per (batch, head)."""
    qs = spec.quant
    assert qs is not None
    fp8 = qs.scale_dtype.value.startswith("fp8")
    return [TensorField("scale_of_scales", torch.float32, (h,), False)] if fp8 else []


def _fields(spec: CodecSpec, h: int, s: int, d: int, role: str) -> list[TensorField]:
    """In storage order: per-token fields, then per-span ones (a pool item's byte order)."""
    m, qs, ks = spec.method, spec.quant, spec.kmeans
    if m is Method.BF16:
        return [TensorField("values", torch.bfloat16, (h, s, d), True)]
    if m is Method.FP8:
        values = TensorField("values", torch.float8_e4m3fn, (h, s, d), True)
        return [values, TensorField("scale", torch.float32, (h,), False)]
    assert qs is not None
    if m is Method.KIVI and role == "k":  # [H, D, S_pad]: tokens grouped, not sliceable
        s_pad = -(-s // qs.group_size) * qs.group_size
        return _quant_fields(spec, h, d, s_pad, per_token=False) + _sos_fields(spec, h)
    fields = _quant_fields(spec, h, s, d, per_token=True)
    if m is not Method.QVG:
        return fields + _sos_fields(spec, h)
    assert ks is not None
    names = [stage_names(t) for t in range(ks.stages)]
    fields += [TensorField(i, ks.id_dtype, (h, s), True) for _, i in names]
    fields += [TensorField(c, ks.centroid_dtype, (h, ks.centroids, d), False) for c, _ in names]
    return fields + _sos_fields(spec, h)


def codec_layout(
    spec: CodecSpec | str, heads: int, tokens: int, head_dim: int, role: str = "k"
) -> CodecLayout:
    """The tensors `encode` stores for one K or V span [1, heads, tokens, head_dim]."""
    spec = get_spec(spec)
    for name, v in (("heads", heads), ("tokens", tokens), ("head_dim", head_dim)):
        if v < 1:
            raise ValueError(f"codec_layout: {name} = {v}; it must be >= 1")
    if role not in ("k", "v"):
        raise ValueError(f"codec_layout: role {role!r}; use 'k' or 'v'")
    if spec.quant is not None and head_dim % spec.quant.group_size:
        g = spec.quant.group_size
        raise ValueError(f"head_dim {head_dim} is not a multiple of {spec.name}'s group {g}")
    fields = tuple(_fields(spec, heads, tokens, head_dim, role))
    return CodecLayout(spec, heads, tokens, head_dim, role, fields)
