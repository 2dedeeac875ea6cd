"""Compress before forgetting: eager encoding, and the test that keeps the ladder lossless.

    committed chunk ──> BF16 window ──(leaves it)──> eager encode plan ──> deep-format span
                                                     (a few plans a step, warm-started by the
                                                      runner from the stream's last span)

Eager encoding (policy "eager", the default) encodes what leaves the BF16 window right away, so
the pool holds history at the deep format long before memory runs short; pressure is then the
exception, not the way compression happens.

`fits_at_deep` is the lossless-first rule of the ladder: while every resident stream's history
would fit at the deep format (sink + window + the reserved commit pages BF16), plus what a
requester needs, drop and preempt wait for the lossless plans under way instead of losing
history. O(resident streams), and asked only when a lossy rung is about to run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from .config import SchedulerConfig
from .output import Effects
from .rungs import NOTHING, PoolOps
from .stream import Stream
from .vocab import EncodePolicy, Format, StreamState, Tier


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
        self.arena = arena_bytes
        self.bf16 = ops.page_bytes[Format.BF16]
        self.retune(config)

    def retune(self, config: SchedulerConfig) -> None:
        """Take new tunables (live reconfigure)."""
        self.config = config
        self.deep = self.ops.page_bytes.get(config.deep_format, self.bf16)
        self.codebook = self.ops.codebook_bytes.get(config.deep_format, 0)

    def at_deep(self, s: Stream) -> int:
        """GPU bytes `s` holds once its middle history is at the deep format."""
        cfg = self.config
        gpu = sum(len(x.pages) for x in s.segments if x.tier == Tier.GPU)
        hot = min(gpu, cfg.sink_pages + cfg.window_pages)
        rest = gpu - hot
        spans = math.ceil(rest / cfg.eager_span_pages) if rest else 0
        return (hot + len(s.reserved)) * self.bf16 + rest * self.deep + spans * self.codebook

    def fits_at_deep(self, extra: int = 0) -> bool:
        """Whether every resident stream at the deep format, plus `extra` bytes, fits."""
        need = extra
        for s in self.admitted.values():
            if s.state is not StreamState.PREEMPTED:
                need += self.at_deep(s)
        return need <= self.arena

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
