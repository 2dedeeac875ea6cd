"""Engine configuration: which model, where the KV arena lives and how big it is.

A frozen dataclass, so it can be built and checked without pydantic; the serving layer's one
pydantic model (`qvg_serve.serve.config`) builds it together with the scheduler's `SchedulerConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass

from kernels.spec import CodecSpec, get_spec

FORMATS = ("bf16", "qvg-int4", "qvg-int2")


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Engine settings; every default fits the built-in tiny model on a laptop CPU."""

    model: str = "tiny"
    """Model preset (`qvg_serve.models.presets`): "tiny" or "self-forcing-1.3b"."""
    weights: str | None = None
    """Checkpoint (safetensors or Self-Forcing .pt); None = shipped weights, else random."""
    device: str = "auto"
    """"auto" = cuda when available, else cpu; or an explicit torch device string."""
    dtype: str = "auto"
    """Compute dtype: "auto" = bfloat16 on CUDA, float32 on CPU; or "bfloat16" / "float32"."""
    kv_cache_memory_bytes: int | None = 256 << 20
    """KV arena bytes; None = `gpu_memory_fraction` of the memory free after the model loads."""
    gpu_memory_fraction: float = 0.9
    """Share of free GPU memory for the KV arena when kv_cache_memory_bytes is None."""
    cpu_offload_bytes: int = 0
    """Pinned-CPU tier for offloaded pages (ladder rung 3); 0 = no offload tier."""
    formats: tuple[str, ...] = FORMATS
    """Page formats the pool holds; the scheduler's early/deep formats must be among them."""
    centroids: int | None = None
    """k-means centroids per span of the QVG formats; None = a power of two near a quarter of a
    page's tokens, within 8..256 (256 at Self-Forcing's 1,560 tokens per frame, 16 for the tiny
    model's 96): a codebook costs C x head_dim x 2 bytes per head, so small pages want fewer."""
    max_batch_kv_tokens: int | None = None
    """Per-layer attention workspace (tokens); None = enough for max_batch_streams streams of
    max history (derived from the arena size)."""
    read_ahead: bool = False
    """Read layer L + 1's history from the pages on a side CUDA stream while layer L attends
    (no effect on CPU), so the read can run beside attention. Costs a second attention
    workspace (the size of max_batch_kv_tokens); the values are the same. Off by default: on
    an H200 it gained 2-3 % per layer at 21 and 81 frames of history and lost 5 % at 7, and a
    whole chunk did not move beyond run-to-run spread (BENCHMARKS.md, seventh session)."""
    seed: int = 0
    """Seed of random weights (benchmarks) and the default stream seed base."""
    overlap_encodes: bool = True
    """Run a step's span encodes on a side CUDA stream beside the forward (no effect on CPU);
    off: after it, on the compute stream. The bytes written are the same."""

    def __post_init__(self) -> None:
        if self.kv_cache_memory_bytes is not None and self.kv_cache_memory_bytes <= 0:
            raise ValueError(
                "kv_cache_memory_bytes must be > 0 (or None: a fraction of free GPU memory)"
            )
        if not 0.0 < self.gpu_memory_fraction <= 1.0:
            raise ValueError(f"gpu_memory_fraction = {self.gpu_memory_fraction}; use (0, 1]")
        if self.cpu_offload_bytes < 0:
            raise ValueError(f"cpu_offload_bytes = {self.cpu_offload_bytes}; use >= 0")
        if "bf16" not in self.formats:
            raise ValueError("formats must include 'bf16' (committed pages are written bf16)")
        if self.centroids is not None and not 1 <= self.centroids <= 256:
            raise ValueError(f"centroids = {self.centroids}; use 1..256 (one-byte cluster ids)")
        if self.dtype not in ("auto", "bfloat16", "float32"):
            raise ValueError(f"dtype = {self.dtype!r}; use 'auto', 'bfloat16' or 'float32'")


def codec_specs(config: EngineConfig, tokens_per_frame: int) -> dict[str, CodecSpec]:
    """Codec spec per pool format: the presets, with `config.centroids`, or by default a
    power of two near a quarter of a page's tokens, within 8..256 (256 at Self-Forcing's
    1,560 tokens per frame; 16 for the tiny model's 96), so small models' codebooks stay
    smaller than the pages they serve."""
    c = config.centroids
    if c is None:
        c = max(8, min(256, 1 << max(0, (tokens_per_frame // 4).bit_length() - 1)))
    specs = {}
    for fmt in config.formats:
        spec = get_spec(fmt)
        specs[fmt] = spec.with_kmeans(centroids=c) if spec.kmeans is not None else spec
    return specs
