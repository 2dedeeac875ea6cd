"""Codec specifications: what a KV codec stores, as frozen dataclasses, and presets by name.

A spec fully determines the bytes of an encoded span, so `kernels.page_layout` lists every
stored tensor (name, shape, dtype, bytes) before anything is encoded. For `qvg-int2` (2-bit
codes, one fp8 scale per 64 channels, 256 bf16 centroids and uint8 ids per stage) a K span
[1, 12, 37440, 128] stores 2.297 bits/value, 6.97x smaller than bf16.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

import torch


class Method(enum.StrEnum):
    """How values are coded. QVG = k-means stages + group-quantized residual."""

    BF16 = "bf16"
    FP8 = "fp8"
    RTN = "rtn"
    KIVI = "kivi"
    QUAROT = "quarot"
    QVG = "qvg"


class ScaleDtype(enum.StrEnum):
    """Storage dtype of per-group scales (and zero points)."""

    FP16 = "fp16"
    BF16 = "bf16"
    FP8 = "fp8-e4m3"

    @property
    def torch_dtype(self) -> torch.dtype:
        return {
            ScaleDtype.FP16: torch.float16,
            ScaleDtype.BF16: torch.bfloat16,
            ScaleDtype.FP8: torch.float8_e4m3fn,
        }[self]


SUPPORTED_BITS = (2, 4, 8)
SUPPORTED_GROUPS = (16, 32, 64, 128)


@dataclass(frozen=True, slots=True)
class QuantSpec:
    """Group quantization of a tensor's last dimension (or of tokens, for KIVI keys).

    Example: bits=2, group_size=64, symmetric=True codes each group of 64 channels on the 4
    levels (-1.5, -0.5, 0.5, 1.5) x scale, with one fp8 scale per group.
    """

    bits: int = 2
    """Bits per code: 2 (4 codes per byte), 4 (2 per byte) or 8."""
    group_size: int = 64
    """Values sharing one scale; bigger groups cost fewer scale bits but fit outliers worse."""
    scale_dtype: ScaleDtype = ScaleDtype.FP8
    """Scale storage; fp8 is paired with a per-(batch, head) fp32 scale-of-scales."""
    symmetric: bool = True
    """Symmetric full-range grid (all 2^bits levels, no zero point) or asymmetric (min + scale)."""
    scale_search: bool = True
    """Pick each group's scale from a grid of candidates by least squared error (symmetric only)."""
    rotate: bool = True
    """Apply an orthonormal Hadamard rotation inside each group before quantizing (Gaussianises)."""
    search_grid: int = 16
    """Candidates in the scale search: multiples of the absmax scale in [search_min, 1]."""
    search_min: float = 0.3
    """Smallest candidate as a fraction of the absmax scale."""
    search_step: int = 1
    """Coarse-to-fine search: 1 tries every candidate; k > 1 tries every k-th (0, k, 2k, ...)
    then the k-1 on each side of the best of those (16 candidates, k=4: 10 tried, not 16)."""

    def __post_init__(self) -> None:
        if self.bits not in SUPPORTED_BITS:
            raise ValueError(f"QuantSpec.bits={self.bits}: use one of {SUPPORTED_BITS}")
        if self.group_size not in SUPPORTED_GROUPS:
            raise ValueError(
                f"QuantSpec.group_size={self.group_size}: use one of {SUPPORTED_GROUPS}"
            )
        if not isinstance(self.scale_dtype, ScaleDtype):
            raise ValueError(f"QuantSpec.scale_dtype={self.scale_dtype!r}: use a ScaleDtype")
        if self.scale_search and not self.symmetric:
            raise ValueError("QuantSpec.scale_search needs symmetric=True (set scale_search=False)")
        if self.search_grid < 1:
            raise ValueError(f"QuantSpec.search_grid={self.search_grid}: must be >= 1")
        if not 1 <= self.search_step <= self.search_grid:
            raise ValueError(
                f"QuantSpec.search_step={self.search_step}: use 1..search_grid ({self.search_grid})"
            )
        if not 0.0 < self.search_min <= 1.0:
            raise ValueError(f"QuantSpec.search_min={self.search_min}: must be in (0, 1]")

    @property
    def levels(self) -> int:
        return 1 << self.bits

    @property
    def codes_per_byte(self) -> int:
        return 8 // self.bits


@dataclass(frozen=True, slots=True)
class KMeansSpec:
    """Progressive residual k-means: `stages` rounds of k-means over tokens, per (batch, head)."""

    stages: int = 1
    """T: k-means rounds on the residual (1 = QVG, 4 = QVG-Pro)."""
    centroids: int = 256
    """C per stage; <= 256 keeps cluster ids in one byte."""
    iters: int = 8
    """Lloyd iterations (assign + update) per stage, then a final assignment. 8, not the
    official 2: on video-like K/V each doubling still lowers relative MSE ~3%, and encoding
    happens once per span, off the per-step path."""
    warm_iters: int | None = 1
    """Lloyd iterations when warm-started from the previous span's centroids (None: `iters`).
    1 by default: measured on video-like K/V, a warm 1-iteration span matches a cold
    8-iteration one's error (BENCHMARKS.md, "Centroid caching") at ~3x less encode time."""
    tol: float = 1e-3
    """Stop early when fewer than this fraction of tokens change cluster."""
    seed: int = 0
    """Seed of the initial centroid choice (distinct random tokens), for reproducible codes."""
    centroid_dtype: torch.dtype = torch.bfloat16
    """Storage dtype of centroids; residuals are taken against the stored (rounded) values."""

    def __post_init__(self) -> None:
        if not 1 <= self.stages <= 8:
            raise ValueError(f"KMeansSpec.stages={self.stages}: use 1..8")
        if not 1 <= self.centroids <= 32768:  # ids are uint8 (<= 256) or int16
            raise ValueError(f"KMeansSpec.centroids={self.centroids}: use 1..32768")
        if self.iters < 0:
            raise ValueError(f"KMeansSpec.iters={self.iters}: must be >= 0")
        if self.warm_iters is not None and self.warm_iters < 0:
            raise ValueError(f"KMeansSpec.warm_iters={self.warm_iters}: must be >= 0 or None")
        if not 0.0 <= self.tol < 1.0:
            raise ValueError(f"KMeansSpec.tol={self.tol}: must be in [0, 1)")
        if self.centroid_dtype not in (torch.bfloat16, torch.float16, torch.float32):
            raise ValueError("KMeansSpec.centroid_dtype: use torch.bfloat16, float16 or float32")

    def iterations(self, warm: bool) -> int:
        """Lloyd iterations of a stage: `warm_iters` when warm-started (if set), else `iters`."""
        return self.warm_iters if warm and self.warm_iters is not None else self.iters

    @property
    def id_dtype(self) -> torch.dtype:
        return torch.uint8 if self.centroids <= 256 else torch.int16


@dataclass(frozen=True, slots=True)
class CodecSpec:
    """A named codec: method plus its quantizer and (for QVG) k-means settings."""

    name: str
    """Preset name or a user label; stored in every encoded container."""
    method: Method
    """How values are coded."""
    quant: QuantSpec | None = None
    """Group quantizer (None for bf16 and fp8)."""
    kmeans: KMeansSpec | None = None
    """Residual k-means (QVG only)."""

    def __post_init__(self) -> None:
        needs_quant = self.method in (Method.RTN, Method.KIVI, Method.QUAROT, Method.QVG)
        if needs_quant and self.quant is None:
            raise ValueError(f"CodecSpec.quant: method {self.method.value} needs a QuantSpec")
        if not needs_quant and self.quant is not None:
            raise ValueError(f"CodecSpec.quant: method {self.method.value} takes no QuantSpec")
        if (self.method is Method.QVG) != (self.kmeans is not None):
            raise ValueError("CodecSpec.kmeans: set it for method qvg and only for qvg")

    def with_kmeans(self, **changes) -> CodecSpec:
        """A copy with k-means fields changed, e.g. `spec.with_kmeans(iters=2)`."""
        if self.kmeans is None:
            raise ValueError(f"CodecSpec.with_kmeans: {self.name} has no k-means")
        return replace(self, kmeans=replace(self.kmeans, **changes))

    def with_quant(self, **changes) -> CodecSpec:
        """A copy with quantizer fields changed, e.g. `spec.with_quant(rotate=False)`."""
        if self.quant is None:
            raise ValueError(f"CodecSpec.with_quant: {self.name} has no quantizer")
        return replace(self, quant=replace(self.quant, **changes))


def _q(bits: int, group: int, **kw) -> QuantSpec:
    return QuantSpec(bits=bits, group_size=group, **kw)


# Baseline quantizers are what their papers describe, without our improvements.
_PLAIN = dict(symmetric=True, scale_search=False, rotate=False)
_ASYM = dict(symmetric=False, scale_search=False, rotate=False)

PRESETS: dict[str, CodecSpec] = {
    "bf16": CodecSpec("bf16", Method.BF16),
    "fp8": CodecSpec("fp8", Method.FP8),
    "qvg-int2": CodecSpec("qvg-int2", Method.QVG, _q(2, 64), KMeansSpec()),
    "qvg-int4": CodecSpec("qvg-int4", Method.QVG, _q(4, 64), KMeansSpec()),
    "qvg-pro-int2": CodecSpec("qvg-pro-int2", Method.QVG, _q(2, 16), KMeansSpec(stages=4)),
    # The official QVG's arithmetic with 4 levels instead of 3: an ablation row.
    "qvg-int2-plain": CodecSpec(
        "qvg-int2-plain", Method.QVG, _q(2, 64, **_PLAIN), KMeansSpec(iters=2)
    ),
    "rtn-int2": CodecSpec("rtn-int2", Method.RTN, _q(2, 64, scale_dtype=ScaleDtype.FP16, **_PLAIN)),
    "rtn-int4": CodecSpec("rtn-int4", Method.RTN, _q(4, 64, scale_dtype=ScaleDtype.FP16, **_PLAIN)),
    "kivi-int2": CodecSpec(
        "kivi-int2", Method.KIVI, _q(2, 32, scale_dtype=ScaleDtype.FP16, **_ASYM)
    ),
    "kivi-int4": CodecSpec(
        "kivi-int4", Method.KIVI, _q(4, 32, scale_dtype=ScaleDtype.FP16, **_ASYM)
    ),
    "quarot-int2": CodecSpec(
        "quarot-int2", Method.QUAROT, _q(2, 64, scale_dtype=ScaleDtype.FP16, **_PLAIN)
    ),
    "quarot-int4": CodecSpec(
        "quarot-int4", Method.QUAROT, _q(4, 64, scale_dtype=ScaleDtype.FP16, **_PLAIN)
    ),
}


def get_spec(spec: CodecSpec | str) -> CodecSpec:
    """Resolve a preset name (or pass a spec through). Unknown names list the presets."""
    if isinstance(spec, CodecSpec):
        return spec
    try:
        return PRESETS[spec]
    except KeyError:
        raise ValueError(f"unknown codec {spec!r}: choose one of {sorted(PRESETS)}") from None
