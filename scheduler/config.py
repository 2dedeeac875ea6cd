"""Configuration of the scheduler policy: batching limits, watermarks, ladder, tenants.

Frozen dataclasses, standard library only; one pydantic model at the edge builds them. Every
check raises ValueError naming the field and the fix.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from types import MappingProxyType

from .vocab import RUNGS, EncodePolicy, Format, Rung

__all__ = ["RUNGS", "Priority", "SchedulerConfig", "TenantConfig"]


class Priority(IntEnum):
    """Priority class of a stream; higher wins memory and batch slots."""

    LOW = 0
    NORMAL = 1
    HIGH = 2


def _positive(name: str, value: object, low: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} = {value!r}; it must be an int >= {low}")


@dataclass(frozen=True, slots=True)
class TenantConfig:
    """Limits of one tenant, in GPU-resident pages (any format: a page is a page).

    Pages, not bytes, so a tenant's quota does not change when the ladder encodes its pages.
    """

    weight: float = 1.0
    """Weight in the fair share of GPU pages and of batch slots; 1.0 = an equal share."""
    page_cap: int | None = None
    """At most this many GPU pages at once, summed over a server's engine replicas (None = no
    cap beyond the pool itself)."""
    page_floor: int = 0
    """Guaranteed GPU pages: other tenants' pressure never offloads/drops/preempts below it."""

    def __post_init__(self) -> None:
        if not self.weight > 0:
            raise ValueError(f"weight = {self.weight!r}; it must be > 0 (e.g. 1.0)")
        _positive("page_floor", self.page_floor, 0)
        if self.page_cap is not None:
            _positive("page_cap", self.page_cap)
            if self.page_cap < self.page_floor:
                raise ValueError(
                    f"page_cap = {self.page_cap} < page_floor = {self.page_floor}; "
                    "raise page_cap or lower page_floor"
                )


DEFAULT_TENANT = TenantConfig()


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    """Policy knobs. Defaults fit Self-Forcing-1.3B: 3-frame chunks of 1,560 tokens a frame."""

    max_batch_streams: int = 4
    """Streams in one forward pass; an H100 keeps ~2 streams real-time, 4 fills the gaps."""
    max_batch_tokens: int = 4 * 3 * 1560
    """Query tokens in one forward pass: four 3-frame chunks (bounds activation memory)."""
    max_waiting: int = 64
    """Queue of submitted, not yet admitted streams; beyond it submit() rejects (HTTP 429)."""
    sink_pages: int = 3
    """First pages of a stream kept BF16: every later chunk attends to them (attention sink)."""
    window_pages: int = 3
    """Most recent pages kept BF16: the next chunk's nearest context, about to be re-read."""
    min_span_pages: int = 3
    """Fewest pages encoded as one span: a span's codebook costs more than one INT2 page."""
    max_span_pages: int = 24
    """Most pages encoded as one span: bounds one encode's transient destination (and its
    latency); 24 pages already make the codebook ~1/24 of a page each."""
    early_format: str = Format.QVG_INT4
    """Format of rung 1 (early encode): near-lossless, so the first loss is the smallest."""
    deep_format: str = Format.QVG_INT2
    """Format of rung 2 (re-encode): ~7x smaller than BF16 at QVG's measured quality."""
    high_watermark: float = 0.90
    """GPU pool use (projected) above which the ladder starts; headroom for encode targets."""
    low_watermark: float = 0.80
    """The ladder frees down to this use, so it does not fire again at the very next commit."""
    rungs: frozenset[Rung] = frozenset(RUNGS)
    """Ladder rungs enabled (names from RUNGS); drop 'encode'/'reencode' for BF16-only paging."""
    retry_after_s: float = 5.0
    """Retry-After of a refusal: about one chunk of a few streams, when memory may be back."""
    deadline_share: float = 0.5
    """Batch slots that go by earliest deadline to real-time streams; the rest by fair share."""
    deadline_horizon_s: float = 1.0
    """A real-time stream takes a deadline slot once its chunk is due within this many seconds."""
    max_blocked_steps: int = 10_000
    """Steps a runnable stream may wait for memory before it fails ("kv_exhausted"): every
    stream ends with a reason even when its enabled rungs can never make room (~10 min)."""
    max_plans_per_step: int = 8
    encode_policy: str = EncodePolicy.EAGER
    """"eager": pages that leave the BF16 window are encoded to deep_format in spans right away
    (a few plans a step), so memory pressure is the exception; "pressure": only above the
    high watermark, to early_format first (round 1's behaviour; early_format only here)."""
    eager_span_pages: int = 6
    """Eager encoding waits for this many BF16 pages past the window, then encodes them as one
    span: a span's codebook costs about one INT2 page at Self-Forcing shapes, so 3-page spans
    would hold ~40% more bytes than 6-page ones (rung 1 under pressure still takes shorter)."""
    eager_plans_per_step: int = 2
    """Eager encode plans ordered per step (each costs the runner a span encode: ~70 ms on an
    H200 for a 6-page span at Self-Forcing shapes, all 30 layers' K and V in a few codec calls,
    next to a ~0.35 s step of 4 streams), so eager encoding never stalls a forward for long."""
    denoise_unreserved: bool = True
    """Under the eager policy a chunk reserves its commit pages from its first pass. True: a
    denoise pass that cannot get them yet still runs (it writes no pages) and the reservation
    is retried at the next pass, while the plans ordered to make room land; only the commit
    pass waits for its pages. False: the stream sits the whole chunk out until they are free
    (measured on an H200: 4 more steps of partly empty batches in 6 x 24 frames at 0.52x)."""
    admit_headroom: float = 1.0
    """Admission admits a stream while the admitted streams' projected footprints (history at
    deep_format, sink + window + one chunk BF16) stay within this share of the GPU arena."""
    """Encode / offload plans the ladder orders per step: each costs the runner GPU time (a
    span encode takes milliseconds), so a burst of pressure is spread over a few steps."""
    max_ladder_candidates: int = 64
    """Streams the ladder looks at per step (best first); bounds a step's cost at many streams."""
    priority_weights: Mapping[int, float] = field(
        default_factory=lambda: {Priority.LOW: 1.0, Priority.NORMAL: 2.0, Priority.HIGH: 4.0}
    )
    """Priority class -> weight in batch slots (weighted fair queueing); unknown classes = 1."""
    tenants: Mapping[str, TenantConfig] = field(default_factory=dict)
    """Tenant name -> limits; a tenant missing here gets TenantConfig() (no cap, no floor)."""

    def __post_init__(self) -> None:
        _positive("max_batch_streams", self.max_batch_streams)
        _positive("max_batch_tokens", self.max_batch_tokens)
        _positive("max_waiting", self.max_waiting, 0)
        _positive("sink_pages", self.sink_pages, 0)
        _positive("window_pages", self.window_pages, 0)
        _positive("min_span_pages", self.min_span_pages)
        _positive("max_span_pages", self.max_span_pages)
        if self.max_span_pages < self.min_span_pages:
            raise ValueError(
                f"max_span_pages = {self.max_span_pages} < min_span_pages = "
                f"{self.min_span_pages}; raise max_span_pages"
            )
        _positive("max_ladder_candidates", self.max_ladder_candidates)
        _positive("max_blocked_steps", self.max_blocked_steps)
        _positive("max_plans_per_step", self.max_plans_per_step)
        _positive("eager_plans_per_step", self.eager_plans_per_step, 0)
        _positive("eager_span_pages", self.eager_span_pages)
        if self.encode_policy not in tuple(EncodePolicy):
            raise ValueError(f"encode_policy = {self.encode_policy!r}; use 'eager' or 'pressure'")
        object.__setattr__(self, "encode_policy", EncodePolicy(self.encode_policy))
        if not 0.0 < self.admit_headroom <= 4.0:
            raise ValueError(
                f"admit_headroom = {self.admit_headroom}; use (0, 4] (1.0 = the whole arena)"
            )
        if not 0.0 < self.low_watermark <= self.high_watermark <= 1.0:
            raise ValueError(
                f"watermarks low = {self.low_watermark}, high = {self.high_watermark}; "
                "need 0 < low_watermark <= high_watermark <= 1"
            )
        unknown = sorted(set(self.rungs) - set(RUNGS))
        if unknown:
            raise ValueError(
                f"rungs has unknown names {unknown}; use names from {tuple(map(str, RUNGS))}"
            )
        if not 0.0 <= self.deadline_share <= 1.0:
            raise ValueError(f"deadline_share = {self.deadline_share}; it must be in [0, 1]")
        if Format.BF16 in (self.early_format, self.deep_format):
            raise ValueError("early_format / deep_format must be quantized formats, not 'bf16'")
        for klass, weight in self.priority_weights.items():
            if not weight > 0:
                raise ValueError(f"priority_weights[{klass}] = {weight}; it must be > 0")
        for name, tenant in self.tenants.items():
            if not isinstance(tenant, TenantConfig):
                raise ValueError(f"tenants[{name!r}] must be a TenantConfig, got {tenant!r}")
        object.__setattr__(self, "rungs", frozenset(Rung(r) for r in self.rungs))
        object.__setattr__(self, "priority_weights", MappingProxyType(dict(self.priority_weights)))
        object.__setattr__(self, "tenants", MappingProxyType(dict(self.tenants)))

    def tenant(self, name: str) -> TenantConfig:
        """Limits of tenant `name` (the default limits if it is not configured)."""
        return self.tenants.get(name, DEFAULT_TENANT)

    def weight(self, priority: int) -> float:
        """Batch-slot weight of a priority class."""
        return self.priority_weights.get(priority, 1.0)
