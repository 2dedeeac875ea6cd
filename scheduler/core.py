"""The scheduler: one `schedule()` decides a step, one `update()` takes the runner's report.

Standard library only. The engine owns the loop; the runner owns tensors; this owns decisions.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .config import SchedulerConfig
from .ladder import LOSSLESS, LOSSY, Ladder
from .layout import OutOfPages
from .lifecycle import Lifecycle
from .output import COMMIT, DENOISE, RECOMPUTE, BatchItem, Effects, SchedulerOutput, StepResult
from .pages import PageAllocator
from .stream import Event, Flag, Stream, StreamState

ADMIT_PER_STEP = 16
"""Waiting streams admitted per step at most: bounds a step's cost under a burst."""


class Scheduler(Lifecycle):
    """Continuous batching of many video streams over one paged pool, with the pressure ladder.

    `allocator` is the pool's PageAllocator (the scheduler is its only client for stream
    pages); `clock` gives seconds for real-time deadlines (the simulator passes a fake one).
    """

    def __init__(
        self,
        config: SchedulerConfig,
        allocator: PageAllocator,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(config, allocator)
        self.clock = clock
        self.ladder = Ladder(config, self.ops, self.book)
        self.counters = self.ops.counters
        self._batch: dict[int, BatchItem] = {}
        self._deadline_slots = int(config.max_batch_streams * config.deadline_share)
        self._lossy_dry = -1  # step whose pool-wide lossy search found nothing (skip repeats)
        self._lossless_done = -1  # step whose pool-wide rungs 1-3 already ran for a commit

    def reconfigure(self, config: SchedulerConfig) -> None:
        """New tunables from the next `schedule()` on (a live config change, no restart).
        Every policy part reads the config at decision time, so swapping it is the change;
        streams keep their pages and sink/window changes apply to later decisions."""
        self.config = self.ladder.config = self.ops.config = self.book.config = config
        self._deadline_slots = int(config.max_batch_streams * config.deadline_share)

    def schedule(self) -> SchedulerOutput:
        """Decide one engine step. In order:

        1. resume preempted streams (oldest of the highest priority first) while the pool is
           below the low watermark: they come back before any new stream;
        2. admit waiting streams (highest priority, then oldest) while the pool stays under
           the high watermark and their tenant under its cap;
        3. fill the batch: real-time streams due soon by deadline (at most deadline_share of
           the slots), then by weighted fair share, up to max_batch_streams and
           max_batch_tokens. A stream on its commit pass gets new BF16 pages for its chunk
           (ladder rungs 1-5 make room if they do not fit); a stream with pages on the CPU is
           reloaded first and runs from the next step; one preempted by dropping recomputes
           its sink + window;
        4. above the high watermark, rungs 1-3 (encode, re-encode, offload) free down to the low
           watermark; if they cannot get under the high one, rung 6 refuses new streams.
        """
        self.step += 1
        fx = Effects(self.step)
        now = self.clock()
        self._resume()
        admitted = self._admit(now, fx)
        self._batch = {item.stream_id: item for item in self._select(fx, now)}
        use = self._pressure(fx)
        freed = tuple(self._freed) + tuple(fx.freed)
        ended = tuple(self._ended_since)
        self._freed, self._ended_since = [], []
        return SchedulerOutput(
            self.step, tuple(self._batch.values()), tuple(fx.orders), freed, admitted,
            tuple(fx.preempted), tuple(fx.degraded), ended, self.refusing,
            self.config.retry_after_s if self.refusing else 0.0, use,
        )  # fmt: skip

    def update(self, result: StepResult) -> None:
        """Take the runner's report of the last schedule(): commit/abort plans, advance streams.

        A batched stream not named in `advanced` nor `failed` retries its pass (pages it was
        given for a commit are released); a failed one ends FAILED with the runner's reason.
        """
        if result.step != self.step:
            raise ValueError(f"result.step = {result.step}; expected the last step {self.step}")
        for plan_id in result.plans_done:
            self.ops.finish(plan_id, True, self.step)
        for plan_id in result.plans_failed:
            self.ops.finish(plan_id, False, self.step)
        failed = dict(result.failed)
        advanced = set(result.advanced)
        for sid, item in self._batch.items():
            s = self.streams.get(sid)
            if s is None:
                continue  # ended meanwhile (cancel): its pages are already released
            if sid not in failed and sid in advanced:
                self._advance(s, item)
            elif item.new_pages:
                self._freed.extend(self.alloc.release(sid, item.new_pages))
                self.book.add_pages(s, -len(item.new_pages))
        for sid, reason in failed.items():
            if sid in self.streams:
                self._end(self.streams[sid], StreamState.FAILED, reason)
        self._batch = {}

    # -- steps of schedule() -------------------------------------------------------------------

    def _advance(self, s: Stream, item: BatchItem) -> None:
        if item.kind == DENOISE:
            s.step += 1
            return
        s.append(list(item.new_pages), self.config.sink_pages)
        self.ops.touch(s)
        if item.kind == RECOMPUTE:
            s.flags.discard(Flag.RECOMPUTE)
            s.rebuild = 0
            return
        s.chunk += 1
        s.step = 0
        if s.done:
            self._end(s, StreamState.FINISHED, "completed")
        elif s.spec.target_fps is not None and s.state is StreamState.RUNNING:
            self.queue.push(s)  # its deadline moved to the next chunk

    def _limit(self, fraction: float) -> int:
        return int(fraction * self.ladder.total)

    def _resume(self) -> None:
        """PREEMPTED -> RUNNING for the best preempted stream, if the pool is below low."""
        waiting = [s for s in self.ops.preempted.values() if not s.paused]
        if not waiting:
            return
        s = min(waiting, key=lambda x: (-x.spec.priority, x.preempted_at, x.seq))
        back = s.rebuild if Flag.RECOMPUTE in s.flags else s.n_pages() - s.gpu_pages
        cost = back * self.ops.page_bytes["bf16"]  # upper bound: CPU pages may be quantized
        if s.plans or not self.book.fits_cap(s.spec.tenant, back):
            return
        if self.ladder.projected_used() + cost > self._limit(self.config.low_watermark):
            return
        del self.ops.preempted[s.id]
        s.state = StreamState.RUNNING
        s.record(self.step, Event.RESTORE)
        self.queue.join(s)

    def _admit(self, now: float, fx: Effects) -> tuple[int, ...]:
        """WAITING -> RUNNING while memory and tenant caps allow (a few per step). A stream
        that does not fit starts rungs 1-3 (never a loss for others) and waits for them."""
        out: list[int] = []
        skipped: list[Stream] = []
        used = self.ladder.projected_used()
        high = self._limit(self.config.high_watermark)
        while not self.ops.preempted and len(out) < ADMIT_PER_STEP:
            s = self._pop_waiting()
            if s is None:
                break
            first = (self.config.sink_pages + s.spec.pages_per_chunk) * self.ops.page_bytes["bf16"]
            if used + first > high:
                skipped.append(s)
                need = used + first - self._limit(self.config.low_watermark)
                self.ladder.relieve(need, self.admitted.values(), (), LOSSLESS, None, fx)
                break
            if not self.book.fits_cap(s.spec.tenant, s.spec.pages_per_chunk):
                skipped.append(s)
                continue
            used += first
            self._start(s, now)
            out.append(s.id)
        for s in skipped:
            self._unpop_waiting(s)
        return tuple(out)

    def _select(self, fx: Effects, now: float) -> list[BatchItem]:
        """The batch, best candidates first; every stream looked at goes back in the queue."""
        cfg = self.config
        batch: list[BatchItem] = []
        seen: list[Stream] = []
        tokens = 0
        look = 4 * cfg.max_batch_streams + 8  # bounds a step's cost when many are blocked
        for s in self.queue.pick(now, cfg.deadline_horizon_s, self._deadline_slots, _runnable):
            seen.append(s)
            rebuild = s.rebuild if Flag.RECOMPUTE in s.flags else 0
            cost = rebuild * s.spec.page_tokens if rebuild else s.spec.chunk_tokens
            if batch and tokens + cost > cfg.max_batch_tokens:
                continue
            item = self._prepare(s, fx, {b.stream_id for b in batch}, cost)
            if item is None:
                self._blocked(s)
            else:
                s.blocked = 0
                batch.append(item)
                tokens += cost
                s.vtime += 1.0 / (cfg.weight(s.spec.priority) * cfg.tenant(s.spec.tenant).weight)
                s.last_served = self.step
            if len(batch) >= cfg.max_batch_streams or len(seen) >= look:
                break
        for s in seen:
            if _runnable(s):
                self.queue.push(s)
        return batch

    def _blocked(self, s: Stream) -> None:
        """Count a pick without memory; past max_blocked_steps the stream fails explicitly."""
        s.blocked += 1
        if s.blocked > self.config.max_blocked_steps and not s.plans:
            self._end(s, StreamState.FAILED, "kv_exhausted: no room for its next pass")

    def _prepare(self, s: Stream, fx: Effects, batch: set[int], tokens: int) -> BatchItem | None:
        """`s`'s pass this step, or None if it must wait (reload, or no room for its pages)."""
        if any(self.ops.pending[p].plan.kind == "move" for p in s.plans):
            return None
        if any(seg.tier != "gpu" for seg in s.segments):
            self._reload(s, fx, batch)
            return None
        kind, n = DENOISE, 0
        if Flag.RECOMPUTE in s.flags:
            kind, n = RECOMPUTE, s.rebuild
        elif s.committing:
            kind, n = COMMIT, s.spec.pages_per_chunk
        new: tuple[int, ...] = ()
        if n:
            got = self._allocate(s, n, fx, batch)
            if got is None:
                return None
            new = got
        return BatchItem(s.id, kind, s.chunk, s.step, tokens, s.table(), new)

    def _reload(self, s: Stream, fx: Effects, batch: set[int]) -> None:
        if self.ops.reload(s, fx):
            return
        need = sum(len(x.pages) for x in s.segments if x.tier != "gpu")
        room = self.book.cap_room(s.spec.tenant)
        if room is not None and room < need:
            self._make_room(s, need - room, fx, batch, "pages")
        self._make_room(s, need * self.ops.page_bytes["bf16"], fx, batch, "bytes")
        self.ops.reload(s, fx)

    def _allocate(self, s: Stream, n: int, fx: Effects, batch: set[int]) -> tuple[int, ...] | None:
        """`n` new BF16 pages for `s`, making room under its tenant cap and in the pool."""
        room = self.book.cap_room(s.spec.tenant)
        if room is not None and room < n:
            if not self._make_room(s, n - room, fx, batch, "pages"):
                return None  # an offload of its tenant's pages commits by the next step
            if not self.book.fits_cap(s.spec.tenant, n) and "drop" in self.config.rungs:
                self.ops.drop(s, fx)  # last resort: its own middle history
            if not self.book.fits_cap(s.spec.tenant, n):
                return None
        pages = self.alloc.allocate(s.id, "bf16", n)
        if isinstance(pages, OutOfPages):
            if not self._make_room(s, n * self.ops.page_bytes["bf16"], fx, batch, "bytes"):
                return None
            pages = self.alloc.allocate(s.id, "bf16", n)
            if isinstance(pages, OutOfPages) and "drop" in self.config.rungs:
                self.ops.drop(s, fx)  # nobody else may lose more: its own middle history
                pages = self.alloc.allocate(s.id, "bf16", n)
            if isinstance(pages, OutOfPages):
                return None
        self.book.add_pages(s, n)
        return pages

    def _make_room(self, s: Stream, need: int, fx: Effects, batch: set[int], unit: str) -> bool:
        """Lossless rungs first; if their plans (next step) cannot cover `need`, lossy ones
        (at once). True if room may be there now (the caller retries)."""
        tenant = s.spec.tenant if unit == "pages" else None
        exclude = batch | {s.id}
        pending = self.ops.pending_frees if unit == "bytes" else 0
        pool = self.admitted.values()
        got = 0
        if tenant is not None or self._lossless_done != self.step:
            got = self.ladder.relieve(need, pool, exclude, LOSSLESS, s, fx, unit, tenant)
            # once a step: later commits of this step wait on the same pending plans
            self._lossless_done = self.step if tenant is None else self._lossless_done
        if pending + got >= need:
            return False  # wait for the plans to commit: cheaper than losing history
        if tenant is None and self._lossy_dry == self.step:
            return True  # an O(streams) search already came back empty this step
        if not self.ladder.relieve(need - got, pool, exclude, LOSSY, s, fx, unit, tenant):
            self._lossy_dry = self.step if tenant is None else self._lossy_dry
        return True

    def _pressure(self, fx: Effects) -> float:
        """Rungs 1-3 above the high watermark; rung 6 while they cannot get under it."""
        used = self.ladder.projected_used()
        high, low = self._limit(self.config.high_watermark), self._limit(self.config.low_watermark)
        short = False
        if used > high:
            got = self.ladder.relieve(
                used - low, self.admitted.values(), self._batch, LOSSLESS, None, fx
            )
            used -= got
            short = used > high
        self.refusing = "refuse" in self.config.rungs and (short or bool(self.ops.preempted))
        return max(0.0, used / self.ladder.total)


def _runnable(s: Stream) -> bool:
    return s.state is StreamState.RUNNING
