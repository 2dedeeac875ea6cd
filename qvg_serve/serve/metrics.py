"""Every Prometheus metric of qvg-serve, defined once (prometheus-client).

Rules: names start with `qvg_`, values are in base units (`_seconds`, `_bytes`), counters end
in `_total`, ratios in `_ratio` (0..1 or a plain factor); label values come from closed sets
(states, formats, tiers, rungs, reasons), never a stream id, so series stay bounded.

Each engine replica owns one `Metrics` with its own `CollectorRegistry` (tests and replicas never
collide) and exposes it per replica; Prometheus scrapes every replica and the queries sum over
them. That is why absolute values are exported next to each ratio: cluster KV usage is
`sum(qvg_kv_bytes{tier="gpu"}) / sum(qvg_kv_capacity_bytes{tier="gpu"})`, never an average of
per-replica ratios.

`METRIC_NAMES` (exposition names, counters with `_total`) and `describe()` are what the Grafana
dashboard test and the docs read: nothing retypes a name.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from scheduler.config import RUNGS
from scheduler.layout import TIERS
from scheduler.stream import StreamState

STATES = tuple(s.value for s in StreamState)
"""Values of the `state` label of qvg_streams."""
REJECT_REASONS = (
    "capacity",  # ladder rung 6: no memory even after the cheaper rungs (429 + Retry-After)
    "queue_full",  # the admission queue holds scheduler.max_waiting streams (429)
    "quota",  # the tenant is at its page cap (429)
    "unauthorized",  # missing or unknown API key (401)
    "invalid",  # malformed or out-of-range request (400 / 422)
    "too_large",  # body over server.max_body_bytes (413)
)
"""Values of the `reason` label of qvg_requests_rejected_total."""
FRAME_TIERS = ("ram", "disk")
"""Values of the `tier` label of qvg_frames_held_bytes (the stream store's media)."""

# Latency buckets (seconds), ~50 ms to ~60 s. Time to first frame = admission + one chunk's
# denoising steps + VAE decode: ~0.1-0.5 s for the tiny model on a CPU or one Self-Forcing
# chunk on an H100, several seconds when queued behind a full batch, tens of seconds when the
# ladder preempts/recomputes. Inter-chunk latency is a 3-frame chunk at 16 fps (~0.19 s
# real-time budget) on a GPU, up to seconds on a CPU. Roughly x2 steps keep quantile error
# below ~50% everywhere in that range.
LATENCY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0)
# One engine step = one forward pass: ~1-50 ms per layer stack on a GPU, up to seconds on a CPU.
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Streams per forward pass: powers of two up to the largest batch a GPU replica runs.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class MetricInfo(NamedTuple):
    """One metric as scraped: exposition name, Prometheus type, help text, label names."""

    name: str
    type: str
    help: str
    labels: tuple[str, ...]


class _Spec(NamedTuple):
    attr: str
    name: str
    kind: type
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] | None = None


# The table every metric is built from. "vLLM:" names the vLLM metric with the same meaning.
_SPECS: tuple[_Spec, ...] = (
    _Spec("streams", "qvg_streams", Gauge,
          "Streams held by the replica, by state (vLLM: num_requests_running/waiting).",
          ("state",)),
    _Spec("waiting", "qvg_waiting_streams", Gauge,
          "Streams queued for admission or to resume after preemption (vLLM: "
          "num_requests_waiting); bounded by scheduler.max_waiting."),
    _Spec("kv_pages", "qvg_kv_pages", Gauge,
          "KV pages held, by page format and storage tier.", ("format", "tier")),
    _Spec("kv_bytes", "qvg_kv_bytes", Gauge,
          "KV bytes held (pages plus their span codebooks), by format and tier.",
          ("format", "tier")),
    _Spec("kv_capacity_bytes", "qvg_kv_capacity_bytes", Gauge,
          "Bytes of the preallocated KV arena, by tier.", ("tier",)),
    _Spec("kv_bf16_equivalent_bytes", "qvg_kv_bf16_equivalent_bytes", Gauge,
          "Bytes the held KV pages would take in BF16, by tier (numerator of the compression "
          "ratio).", ("tier",)),
    _Spec("kv_usage", "qvg_kv_usage_ratio", Gauge,
          "Used share (0..1) of the GPU KV arena (vLLM: kv_cache_usage_perc)."),
    _Spec("compression", "qvg_kv_effective_compression_ratio", Gauge,
          "BF16-equivalent bytes / held bytes of the resident KV (1 = all BF16; ~7 = all "
          "QVG INT2)."),
    _Spec("ladder_transitions", "qvg_ladder_transitions_total", Counter,
          "Memory-pressure ladder actions, by rung name (encode ... refuse).", ("rung",)),
    _Spec("preemptions", "qvg_preemptions_total", Counter,
          "Streams preempted (pages offloaded or dropped) (vLLM: num_preemptions_total)."),
    _Spec("rejected", "qvg_requests_rejected_total", Counter,
          "HTTP requests refused, by reason.", ("reason",)),
    _Spec("frames", "qvg_frames_generated_total", Counter,
          "Video frames generated (vLLM: generation_tokens_total)."),
    _Spec("steps", "qvg_engine_steps_total", Counter, "Engine steps (forward passes) run."),
    _Spec("step_duration", "qvg_engine_step_duration_seconds", Histogram,
          "Wall time of one engine step: schedule, KV moves, forward, commit.",
          buckets=STEP_BUCKETS),
    _Spec("batch_streams", "qvg_engine_batch_streams", Histogram,
          "Streams in one engine step's batch (vLLM: iteration_tokens_total, in streams).",
          buckets=BATCH_BUCKETS),
    _Spec("ttff", "qvg_time_to_first_frame_seconds", Histogram,
          "Stream creation to its first frame (vLLM: time_to_first_token_seconds).",
          buckets=LATENCY_BUCKETS),
    _Spec("inter_chunk", "qvg_inter_chunk_latency_seconds", Histogram,
          "Time between consecutive chunks of one stream (vLLM: inter_token_latency_seconds).",
          buckets=LATENCY_BUCKETS),
    _Spec("frame_bytes", "qvg_frames_held_bytes", Gauge,
          "Bytes of ended streams' frames (JPEGs, video.mp4) the app's stream store holds, by "
          "tier: ram = object store (capped by durability.frames_ram_mib), disk = "
          "durability.frames_dir (frames_disk_gib). App-wide, as of this replica's last "
          "heartbeat: every replica reports the same figure, so aggregate with max(), not "
          "sum().", ("tier",)),
    _Spec("start_time", "qvg_replica_start_time_seconds", Gauge,
          "Unix time the replica's metrics began (like process_start_time_seconds): a change "
          "on one target is a replica restart, which also resets its counters."),
)  # fmt: skip

_TYPES = {Gauge: "gauge", Counter: "counter", Histogram: "histogram"}


def describe() -> list[MetricInfo]:
    """Every metric: name as scraped (counters with `_total`), type, help, label names."""
    return [MetricInfo(s.name, _TYPES[s.kind], s.help, s.labels) for s in _SPECS]


METRIC_NAMES: tuple[str, ...] = tuple(m.name for m in describe())


def _build(spec: _Spec, registry: CollectorRegistry) -> Gauge | Counter | Histogram:
    # prometheus-client appends `_total` to a counter itself; give it the stem.
    name = spec.name.removesuffix("_total") if spec.kind is Counter else spec.name
    kwargs = {"buckets": spec.buckets} if spec.buckets else {}
    return spec.kind(name, spec.help, spec.labels, registry=registry, **kwargs)


def _check(value: str, allowed: tuple[str, ...], label: str) -> str:
    if value not in allowed:
        raise ValueError(f"{label} = {value!r}; use one of {allowed} (labels stay bounded)")
    return value


class Metrics:
    """One replica's metrics in its own registry. Attributes are the prometheus-client objects
    (`metrics.frames.inc(3)`); the helpers below keep label values in their closed sets."""

    streams: Gauge
    waiting: Gauge
    kv_pages: Gauge
    kv_bytes: Gauge
    kv_capacity_bytes: Gauge
    kv_bf16_equivalent_bytes: Gauge
    kv_usage: Gauge
    compression: Gauge
    ladder_transitions: Counter
    preemptions: Counter
    rejected: Counter
    frames: Counter
    steps: Counter
    step_duration: Histogram
    batch_streams: Histogram
    ttff: Histogram
    inter_chunk: Histogram
    frame_bytes: Gauge
    start_time: Gauge

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        for spec in _SPECS:
            setattr(self, spec.attr, _build(spec, self.registry))
        for rung in RUNGS:  # export 0 for every rung, so rate() sees the first transition
            self.ladder_transitions.labels(rung=rung)
        for reason in REJECT_REASONS:
            self.rejected.labels(reason=reason)
        for tier in FRAME_TIERS:
            self.frame_bytes.labels(tier=tier)
        self.start_time.set(time.time())

    def set_streams(self, counts: Mapping[str, int]) -> None:
        """Set qvg_streams for every state; states missing from `counts` read 0."""
        for state in counts:
            _check(state, STATES, "state")
        for state in STATES:
            self.streams.labels(state=state).set(counts.get(state, 0))

    def set_kv(
        self, pages: Mapping[tuple[str, str], int], nbytes: Mapping[tuple[str, str], int]
    ) -> None:
        """Set pages and bytes per (format, tier); a pair seen before and absent now reads 0."""
        for metric, values in ((self.kv_pages, pages), (self.kv_bytes, nbytes)):
            seen = {(s.labels["format"], s.labels["tier"]) for s in metric.collect()[0].samples}
            for fmt, tier in seen | set(values):
                _check(tier, TIERS, "tier")
                metric.labels(format=fmt, tier=tier).set(values.get((fmt, tier), 0))

    def set_frame_bytes(self, by_tier: Mapping[str, int]) -> None:
        """Set qvg_frames_held_bytes from the store's figures (FRAME_TIERS)."""
        for tier, nbytes in by_tier.items():
            self.frame_bytes.labels(tier=_check(tier, FRAME_TIERS, "tier")).set(nbytes)

    def transition(self, rung: str, n: int = 1) -> None:
        """Count `n` ladder actions of `rung` (a name from scheduler.config.RUNGS)."""
        self.ladder_transitions.labels(rung=_check(rung, RUNGS, "rung")).inc(n)

    def reject(self, reason: str) -> None:
        """Count one refused request; `reason` is one of REJECT_REASONS."""
        self.rejected.labels(reason=_check(reason, REJECT_REASONS, "reason")).inc()

    def observe_step(self, seconds: float, batch_streams: int) -> None:
        """Record one engine step: its wall time and how many streams it batched."""
        self.steps.inc()
        self.step_duration.observe(seconds)
        self.batch_streams.observe(batch_streams)

    def exposition(self) -> tuple[bytes, str]:
        """The text exposition of this registry and its content type (for GET /metrics)."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
