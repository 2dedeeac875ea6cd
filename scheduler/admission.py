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

The arena's limit leaves out the blocks one eager span's encode needs for its destination
(`Costs.reserve`; headroom.encode_room keeps them free at run time). Items are counted at their
own bytes, not their share of a slab block: what slack the blocks add is absorbed at run time by
waiting (lossless first: a stream waits for encodes or for another stream's reserved commit),
never by a loss; counting it here too (a BF16 page's whole block) would admit ~30% fewer
streams at Self-Forcing shapes for nothing (the simulator shows the same zero losses).
"""

from __future__ import annotations

import math
from typing import NamedTuple

from .config import SchedulerConfig
from .layout import PoolLayout, codebook_kind
from .stream import StreamSpec
from .vocab import EncodePolicy, Format


class Costs(NamedTuple):
    """GPU bytes the projections count per item, and the blocks kept for an encode."""

    bf16: int
    deep: int
    codebook: int
    """Of one span of the deep format (0 if it has none)."""
    reserve: int
    """Blocks one eager span's encode destination needs (its deep pages + codebook), in bytes."""


def costs(config: SchedulerConfig, layout: PoolLayout) -> Costs:
    deep, sizes = config.deep_format, layout.item_bytes
    bf16 = sizes[Format.BF16]
    if deep not in sizes:  # a BF16-only pool: nothing is ever encoded
        return Costs(bf16, bf16, 0, 0)
    book = codebook_kind(deep)
    blocks = -(-config.eager_span_pages // layout.items_per_block(deep)) + (book in sizes)
    return Costs(bf16, sizes[deep], sizes.get(book, 0), blocks * layout.block_bytes)


class Footprints:
    """Projected bytes of each admitted stream, and their sum, kept incrementally."""

    def __init__(self, config: SchedulerConfig, layout: PoolLayout) -> None:
        self.layout = layout
        self.of: dict[int, int] = {}
        self.total = 0
        self.retune(config)

    def retune(self, config: SchedulerConfig) -> None:
        """Take new tunables (live reconfigure): admitted streams keep their projections."""
        self.config = config
        self.bf16, self.deep, self.codebook, reserve = costs(config, self.layout)
        arena = self.layout.gpu_blocks * self.layout.block_bytes
        self.limit = int(config.admit_headroom * arena) - reserve
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
        """How many more streams like `spec` admission would take now (the same arithmetic:
        admission also takes a stream alone in an empty pool, fitting or not)."""
        n = max(0, (self.limit - self.total) // max(1, self.bytes_of(spec)))
        return max(1, n) if self.gate and not self.of else n
