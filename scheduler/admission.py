"""Admission by projected memory: what a stream will hold at the end of its life.

    footprint(stream) = (sink + window + one chunk) pages in BF16            (always hot)
                      + the rest of its history at the deep format           (eager encoding)
                      + one codebook per span of that rest (eager_span_pages a span)

A stream shorter than sink + window + one chunk is projected at its own length in BF16.
For a stream of unbounded length (target_chunks None) nothing about its future length is
known: it is projected at what it holds when it starts (sink + window + one chunk), and the
ladder (lossless rungs first) handles its growth. A stream is admitted while the admitted
streams' projections plus its own stay within `admit_headroom` x the GPU arena: so when every
admitted stream reaches its full length, its history still fits at the deep format, and the
ladder never has to lose any.
`/v1/capacity` asks the same function how many more such streams fit.
"""

from __future__ import annotations

import math

from .config import SchedulerConfig
from .stream import StreamSpec
from .vocab import EncodePolicy, Format


class Footprints:
    """Projected bytes of each admitted stream, and their sum, kept incrementally."""

    def __init__(
        self,
        config: SchedulerConfig,
        page_bytes: dict[str, int],
        codebook_bytes: dict[str, int],
        arena_bytes: int,
    ) -> None:
        self.page_bytes, self.codebook_bytes, self.arena = page_bytes, codebook_bytes, arena_bytes
        self.bf16 = page_bytes[Format.BF16]
        self.of: dict[int, int] = {}
        self.total = 0
        self.retune(config)

    def retune(self, config: SchedulerConfig) -> None:
        """Take new tunables (live reconfigure): admitted streams keep their projections."""
        self.config = config
        self.deep = self.page_bytes.get(config.deep_format, self.bf16)
        self.codebook = self.codebook_bytes.get(config.deep_format, 0)
        self.limit = int(config.admit_headroom * self.arena)
        # admission waits on projections under the eager policy (pressure: round 1's rule)
        self.gate = config.encode_policy == EncodePolicy.EAGER

    def bytes_of(self, spec: StreamSpec) -> int:
        cfg = self.config
        hot = cfg.sink_pages + cfg.window_pages + spec.pages_per_chunk
        pages = hot if spec.target_chunks is None else spec.target_chunks * spec.pages_per_chunk
        hot = min(hot, pages)  # a short stream never holds a whole sink + window
        rest = max(0, pages - cfg.sink_pages - cfg.window_pages)
        spans = math.ceil(rest / cfg.eager_span_pages) if rest else 0
        return hot * self.bf16 + rest * self.deep + spans * self.codebook

    def fits(self, spec: StreamSpec) -> bool:
        return self.total + self.bytes_of(spec) <= self.limit

    def add(self, spec: StreamSpec) -> None:
        n = self.bytes_of(spec)
        self.of[spec.stream_id] = n
        self.total += n

    def remove(self, stream_id: int) -> None:
        self.total -= self.of.pop(stream_id, 0)

    def streams_that_fit(self, spec: StreamSpec) -> int:
        """How many more streams like `spec` admission would take now."""
        return max(0, (self.limit - self.total) // max(1, self.bytes_of(spec)))
