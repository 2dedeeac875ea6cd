"""The memory-pressure ladder: which rung, which victims, until enough is freed.

    GPU pool use (projected: after pending plans commit)
    1.0 +----------------------------------------------
        |  a commit does not fit: rungs 1-5 for it
    high+---------------------------------------------- rungs 1-3 start; if they cannot
        |                                               bring use under high: rung 6 (refuse)
    low +---------------------------------------------- ... and free down to here
        |  admission and resumes only while below
    0.0 +----------------------------------------------

Rungs, cheapest loss first: 1 encode BF16 middle pages (early format), 2 re-encode to the deep
format, 3 offload middle pages to the CPU tier, 4 drop middle history (degraded), 5 preempt a
stream, 6 refuse new streams. Rungs 1-3 lose nothing but a little precision and wait a step
(their plans commit in update()); rungs 4-5 free at once and only ever run for a stream that
cannot commit its chunk otherwise.

Victims (tenants.victim_key): tenants above their fair share first, then lower priority, then
idle streams, then the stream that loses least, then the least recently served. Rungs 3-5
never push another tenant below its floor, and rungs 4-5 never hit a higher priority class
than the stream they make room for.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable

from .config import SchedulerConfig
from .output import Effects
from .rungs import Gain, PoolOps
from .stream import Stream
from .tenants import TenantBook, victim_key
from .vocab import Format, Rung, StreamState, Tier, Unit

ENCODES = (Rung.ENCODE, Rung.REENCODE)
LOSSLESS = (Rung.ENCODE, Rung.REENCODE, Rung.OFFLOAD)
"""Rungs 1-3: they lose nothing but a little precision, and wait a step for their plans."""
LOSSY = (Rung.DROP, Rung.PREEMPT)
"""Rungs 4-5: they free at once, and only for a stream that cannot commit otherwise."""

# Members bound once for `_loss` (~30 calls a step): a global read is ~10x cheaper than an
# enum attribute on CPython 3.11 (Rung.ENCODE costs ~0.3 us).
_ENCODE, _REENCODE, _OFFLOAD, _PREEMPT = Rung.ENCODE, Rung.REENCODE, Rung.OFFLOAD, Rung.PREEMPT
_BF16, _GPU = Format.BF16, Tier.GPU


class Ladder:
    """Walks the rungs over candidate streams; PoolOps does the actions."""

    def __init__(self, config: SchedulerConfig, ops: PoolOps, book: TenantBook) -> None:
        self.config = config
        self.ops = ops
        self.book = book
        self.alloc = ops.alloc
        layout = self.alloc.layout
        self.total = layout.gpu_blocks * layout.block_bytes
        # The largest item kind: free_items of it // per block = free blocks, in O(1).
        sizes = layout.item_bytes
        self._big = max(sizes, key=lambda k: sizes[k])
        self._per_big = layout.items_per_block(self._big)
        self._memo: dict[str, list[Stream]] = {}  # lossless candidates of this step, by rung
        self._memo_step = -1

    def limit(self, fraction: float) -> int:
        """GPU bytes at `fraction` of the pool (a watermark in bytes)."""
        return int(fraction * self.total)

    def projected_used(self) -> int:
        """GPU bytes of blocks in use once every pending plan commits (sources freed).

        Counted in whole blocks (a block typed to small items counts as used until empty):
        what limits a BF16 commit is free blocks. O(1): PoolStats would be O(blocks).
        """
        free_blocks = self.alloc.free_items(Tier.GPU, self._big) // self._per_big
        return self.total - free_blocks * self.alloc.layout.block_bytes - self.ops.pending_frees

    def pressure(
        self, streams: Iterable[Stream], batch: Collection[int], fx: Effects
    ) -> tuple[float, bool]:
        """Rungs 1-3 above the high watermark (never on `batch`); rung 6 (refuse) while they
        cannot get under it or a stream waits preempted. (projected GPU use 0..1, refusing)."""
        used = self.projected_used()
        high, low = self.limit(self.config.high_watermark), self.limit(self.config.low_watermark)
        short = False
        if used > high:
            used -= self.relieve(used - low, streams, batch, LOSSLESS, None, fx)
            short = used > high
        refusing = Rung.REFUSE in self.config.rungs and (short or bool(self.ops.preempted))
        return max(0.0, used / self.total), refusing

    def relieve(
        self,
        need: int,
        streams: Iterable[Stream],
        exclude: Collection[int],
        rungs: tuple[Rung, ...],
        requester: Stream | None,
        fx: Effects,
        unit: Unit = Unit.BYTES,
        only_tenant: str | None = None,
    ) -> int:
        """Walk `rungs` in order until `need` (GPU bytes, or GPU pages with Unit.PAGES) is
        freed; return what was freed (projected). Rungs 3-5 never touch streams in `exclude`
        (this step's batch); encodes may (a plan's sources stay readable until it commits)."""
        enabled = [Rung(r) for r in rungs if r in self.config.rungs]  # members: _loss uses `is`
        if unit == Unit.PAGES:
            enabled = [r for r in enabled if r not in ENCODES]  # encodes keep the page count
        lossless = all(r in LOSSLESS for r in enabled)
        if lossless:
            if len(fx.orders) >= self.config.max_plans_per_step:
                return 0
            if self._memo_step != fx.step:
                self._memo_step, self._memo = fx.step, {}
                self._dirty()  # prune once a step
            streams = self.ops.dirty.values()
        pool = [s for s in streams if _touchable(s)]
        if only_tenant is not None:
            pool = [s for s in pool if s.spec.tenant == only_tenant]
        got = 0
        for rung in enabled:
            if got >= need:
                break
            if rung in LOSSLESS and len(fx.orders) >= self.config.max_plans_per_step:
                continue  # plan budget of this step spent: skip the O(streams) search
            act = self._action(rung)
            for s in self._ordered(
                rung, pool, exclude, requester, lossless and only_tenant is None
            ):
                if rung in LOSSLESS and len(fx.orders) >= self.config.max_plans_per_step:
                    return got  # the rest next step (pressure persists until then)
                gain = act(s, fx)
                got += gain.pages if unit == Unit.PAGES else gain.bytes
                if got >= need:
                    break
        return got

    def _ordered(
        self,
        rung: Rung,
        pool: list[Stream],
        exclude: Collection[int],
        req: Stream | None,
        memo: bool,
    ) -> list[Stream]:
        """Candidates of `rung`, best first; lossless lists are reused within a step (a stale
        entry is harmless: acting on it finds nothing to do), which keeps a step O(changed)."""
        key = rung if rung in ENCODES else f"{rung}:{req is None}"
        if not memo or key not in self._memo:
            cands = pool if rung in ENCODES else [s for s in pool if s.id not in exclude]
            found = self._candidates(rung, cands, req)
            if not memo:
                return found
            self._memo[key] = found
        return [s for s in self._memo[key] if rung in ENCODES or s.id not in exclude]

    def _dirty(self) -> list[Stream]:
        """Changed streams; those on which no lossless rung can act leave the dirty set."""
        dirty = self.ops.dirty
        loss = self._loss
        for sid, s in list(dirty.items()):
            # `all(... for r in LOSSLESS)` unrolled: this runs for every changed stream
            if loss(_ENCODE, s) is None and loss(_REENCODE, s) is None:
                if loss(_OFFLOAD, s) is None:
                    del dirty[sid]
        return list(dirty.values())

    def _action(self, rung: Rung) -> Callable[[Stream, Effects], Gain]:
        actions: dict[Rung, Callable[[Stream, Effects], Gain]] = {
            Rung.ENCODE: self.ops.encode,
            Rung.REENCODE: self.ops.reencode,
            Rung.OFFLOAD: self.ops.offload,
            Rung.DROP: self.ops.drop,
            Rung.PREEMPT: self.ops.preempt,
        }
        return actions[rung]

    def _candidates(self, rung: Rung, pool: list[Stream], requester: Stream | None) -> list[Stream]:
        """Streams a rung may act on, first victim first (at most max_ladder_candidates)."""
        over = self.book.over_share()
        req_tenant = requester.spec.tenant if requester is not None else None
        keyed = []
        for s in pool:
            loss = self._loss(rung, s)
            if loss is None:
                continue
            if rung not in ENCODES:
                if not self.book.can_lose(s.spec.tenant, loss, req_tenant):
                    continue
            if rung in LOSSY and requester is not None:
                if s.spec.priority > requester.spec.priority or s is requester:
                    continue
            keyed.append((victim_key(s, over, loss if rung in LOSSY else 0), s))
        keyed.sort(key=lambda item: item[0])
        return [s for _, s in keyed[: self.config.max_ladder_candidates]]

    def _loss(self, rung: Rung, s: Stream) -> int | None:
        """GPU pages the rung would take from `s` (0 for encodes); None if it cannot act."""
        cfg = self.config
        if rung is _ENCODE:  # plain loops: the hottest lines of a busy step (see BENCHMARKS)
            bf16 = 0
            for x in s.segments:
                if x.plan is None and x.fmt == _BF16:
                    bf16 += len(x.pages)
            return 0 if bf16 - cfg.sink_pages - cfg.window_pages >= cfg.min_span_pages else None
        if rung is _REENCODE:
            early = cfg.early_format
            for x in s.segments:
                if x.plan is None and x.fmt == early and x.tier == _GPU:
                    return 0
            return None
        spare = s.n_pages() - cfg.sink_pages - cfg.window_pages
        if rung is _PREEMPT:
            return s.gpu_pages if s.gpu_pages and not s.plans else None
        if rung is _OFFLOAD and (not self.ops.has_cpu or s.state is not StreamState.IDLE):
            return None  # only cold (idle) streams: a running one would reload at once
        # GPU pages outside sink + window (offloaded pages free no GPU memory)
        loss = min(spare, s.gpu_pages - min(s.n_pages(), cfg.sink_pages + cfg.window_pages))
        return loss if loss > 0 else None


def _touchable(s: Stream) -> bool:
    """Streams that hold pages the ladder may act on."""
    return s.state in (StreamState.RUNNING, StreamState.IDLE) and bool(s.segments)
