"""Compress before forgetting: eager encoding, and the test that keeps the ladder lossless.

    committed chunk ──> BF16 window ──(leaves it)──> eager encode plan ──> deep-format span
                                                     (a few plans a step, warm-started by the
                                                      runner from the stream's last span)

Eager encoding (policy "eager", the default) encodes what leaves the BF16 window right away, so
the pool holds history at the deep format long before memory runs short; pressure is then the
exception, not the way compression happens.

`encode_room` keeps the GPU pool able to begin an encode: an encode's destination (deep pages
and a codebook) is allocated before its BF16 sources are freed, so a pool whose last free
blocks went to BF16 commits while its streams hold encodable BF16 can only free memory by
losing history. Under the eager policy a new BF16 allocation that would take those blocks
waits one step while an encode takes them instead.

`may_wait` is the lossless-first rule of the ladder: while every resident stream's history
would fit at the deep format (`fits_at_deep`: sink + window + the reserved commit pages BF16,
encoded spans as they are), plus what a requester needs, drop and preempt wait for lossless
progress (plans under way, or another stream's commit this step or reserved) instead of losing
history. O(resident streams), and asked only when a lossy rung is about to run.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping

from .admission import costs
from .config import SchedulerConfig
from .layout import codebook_kind
from .output import Effects
from .rungs import NOTHING, PoolOps
from .stream import Stream
from .vocab import EncodePolicy, Format, StreamState, Tier, Unit


class Headroom:
    def __init__(
        self,
        config: SchedulerConfig,
        ops: PoolOps,
        admitted: Mapping[int, Stream],
        arena_bytes: int,
    ) -> None:
        self.config = config
        self.ops = ops
        self.admitted = admitted
        self._arena_bytes = arena_bytes
        self.retune(config)

    def retune(self, config: SchedulerConfig) -> None:
        """Take new tunables (live reconfigure)."""
        self.config = config
        layout = self.ops.alloc.layout
        # item bytes and the encode destination kept free, as admission counts them
        self.bf16, self.deep, self.codebook, reserve = costs(config, layout)
        self.arena = self._arena_bytes - reserve
        deep = config.deep_format
        kinds = {Format.BF16: 0}
        if deep in layout.page_bytes:  # a BF16-only pool never encodes: nothing to keep free
            kinds[deep] = config.eager_span_pages
            if layout.has_codebook(deep):
                kinds[codebook_kind(deep)] = 1
        # kind -> (items per block, items one eager span's encode needs of it)
        self._span_items = {k: (layout.items_per_block(k), n) for k, n in kinds.items()}

    def encode_room(self, take: int) -> bool:
        """Whether one eager span's encode (its deep pages and codebook) can still begin on
        the GPU after `take` more BF16 pages are allocated there. O(1)."""
        alloc, gpu = self.ops.alloc, Tier.GPU
        free = alloc.free_blocks(gpu)
        left = free
        for kind, (per, n) in self._span_items.items():
            want = take if kind == Format.BF16 else n
            typed = alloc.free_items(gpu, kind) - free * per  # free slots of typed blocks
            left -= -(-max(0, want - typed) // per)
        return left >= 0

    def at_deep(self, s: Stream) -> int:
        """GPU bytes `s` holds once its middle history is at the deep format: spans already
        encoded count as they are (one codebook each), BF16 pages as eager spans would."""
        cfg = self.config
        gpu, bf16, coded = Tier.GPU, Format.BF16, 0
        plain = spans = 0
        for x in s.segments:
            if x.tier != gpu:
                continue
            if x.fmt == bf16:
                plain += len(x.pages)
            else:
                coded += len(x.pages)
                spans += 1
        hot = min(plain, cfg.sink_pages + cfg.window_pages)
        rest = plain - hot
        spans += math.ceil(rest / cfg.eager_span_pages) if rest else 0
        return (
            (hot + len(s.reserved)) * self.bf16
            + (rest + coded) * self.deep
            + (spans * self.codebook)
        )

    def fits_at_deep(self, extra: int = 0) -> bool:
        """Whether every resident stream at the deep format, plus `extra` bytes, fits."""
        need = extra
        for s in self.admitted.values():
            if s.state is not StreamState.PREEMPTED:
                need += self.at_deep(s)
        return need <= self.arena

    def may_wait(
        self, s: Stream, batch: Collection[int], extra: int, unit: Unit = Unit.BYTES
    ) -> bool:
        """Lossless first: `s` waits instead of anyone losing history while memory comes back
        without loss (plans under way, or another stream's commit ahead) and every resident
        stream fits at the deep format beside `extra` bytes (0 for a tenant's pages)."""
        if not self.ops.pending_frees and not self.commit_ahead(s, batch):
            return False
        return self.fits_at_deep(extra if unit == Unit.BYTES else 0)

    def commit_ahead(self, s: Stream, batch: Collection[int]) -> bool:
        """Whether another stream makes progress without new memory: one already in this
        step's `batch`, or a running one holding a commit reservation. Its commit ends it
        (freeing its pages) or gives it encodable pages."""
        if any(sid != s.id for sid in batch):
            return True
        running = StreamState.RUNNING
        return any(x.reserved and x.state is running and x is not s for x in self.admitted.values())

    def eager(self, fx: Effects) -> int:
        """Order up to eager_plans_per_step encode plans for streams whose BF16 middle grew;
        returns plans ordered. Streams looked at leave the queue until their pages change."""
        cfg = self.config
        if cfg.encode_policy != EncodePolicy.EAGER or "encode" not in cfg.rungs:
            return 0
        budget, queue = cfg.eager_plans_per_step, self.ops.eager
        ordered = 0
        while queue and ordered < budget:
            sid = next(iter(queue))
            s = queue[sid]
            if s.state in (StreamState.RUNNING, StreamState.IDLE) and sid in self.admitted:
                if self.ops.encode(s, fx, cfg.eager_span_pages) != NOTHING:
                    ordered += 1
                    continue  # it may hold another span: look again
            del queue[sid]
        return ordered
