"""Stream lifecycle: the registry of streams and every transition outside the batch.

    submit -> WAITING --admit--> RUNNING <--pause/unpause--> IDLE
                 |                  |  ^                       |
                 | cancel           |  +---- resume ----+      |
                 v                  v                   |      v
             CANCELLED     FINISHED / FAILED        PREEMPTED (ladder rung 5)

`Lifecycle` is owned by the `Scheduler` (core.py): the scheduler decides steps and batches,
this object holds the streams and makes the transitions, each recorded at the scheduler's
`step` (passed in). Every end releases all of the stream's pages at once (aborting its
pending plans first) and leaves an EndedStream with the reason. Pages freed and streams
ended between two schedule() calls wait in `freed` / `ended_since` for the next one.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from dataclasses import dataclass, replace

from .admission import Footprints
from .config import SchedulerConfig
from .ladder import LOSSLESS, Ladder
from .output import Admission, Effects, EndedStream
from .pages import PageAllocator
from .rungs import PoolOps
from .runqueue import RunQueue
from .stream import Event, Stream, StreamSpec
from .tenants import TenantBook
from .vocab import Flag, Format, RejectReason, Rung, StreamState

KEEP_ENDED = 4096
"""Ended streams remembered for status queries (oldest forgotten first)."""

ADMIT_PER_STEP = 16
"""Waiting streams admitted per step at most: bounds a step's cost under a burst."""


@dataclass(frozen=True, slots=True)
class IntakeView:
    """What the answer to a new stream's submit depends on, at one moment. A server's engine
    thread publishes it after every step, so creates are answered without waiting for the
    step in progress (qvg_serve/serve/intake.py). `waiting`: streams queued then."""

    config: SchedulerConfig
    bf16_capacity: int
    refusing: bool
    waiting: int


def admission(spec: StreamSpec, view: IntakeView) -> Admission:
    """The one rule for a new stream: too large for this pool, refused under KV pressure,
    the queue full, or queued. `Lifecycle.submit` and a server's intake both apply it."""
    cfg = view.config
    least = cfg.sink_pages + cfg.window_pages + spec.pages_per_chunk
    cap = cfg.tenant(spec.tenant).page_cap
    if spec.chunk_tokens > cfg.max_batch_tokens or least > min(
        view.bf16_capacity, cap if cap is not None else least
    ):
        return Admission(False, RejectReason.TOO_LARGE)
    if view.refusing:
        return Admission(False, RejectReason.KV_PRESSURE, cfg.retry_after_s)
    if view.waiting >= cfg.max_waiting:
        return Admission(False, RejectReason.QUEUE_FULL, cfg.retry_after_s)
    return Admission(True)


class Lifecycle:
    """Every stream not forgotten, by state, and the transitions between states."""

    def __init__(
        self,
        config: SchedulerConfig,
        alloc: PageAllocator,
        ops: PoolOps,
        ladder: Ladder,
        queue: RunQueue,
        footprints: Footprints,
    ) -> None:
        self.config = config
        self.footprints = footprints
        self.alloc = alloc
        self.ops = ops
        self.book: TenantBook = ops.book
        self.ladder = ladder
        self.queue = queue
        self.streams: dict[int, Stream] = {}  # every stream not ended
        self.admitted: dict[int, Stream] = {}  # running, idle or preempted
        self.ended: OrderedDict[int, EndedStream] = OrderedDict()
        self._waiting: list[tuple[int, int, Stream]] = []  # heap: (-priority, seq, stream)
        self.n_waiting = 0
        self._seq = 0
        self.freed: list[int] = []  # pages freed outside schedule(), reported by the next one
        self.ended_since: list[tuple[int, str]] = []  # ends since the last schedule()
        layout = alloc.layout
        self.bf16_capacity = layout.gpu_blocks * (
            layout.block_bytes // layout.page_bytes[Format.BF16]
        )

    # -- client actions ------------------------------------------------------------------------

    def submit(
        self,
        spec: StreamSpec,
        step: int,
        refusing: bool,
        resume_chunks: int = 0,
        reserved: bool = False,
    ) -> Admission:
        """Queue a new stream, or reject it with a reason (the API's 429 + Retry-After).

        `resume_chunks` > 0: the stream already committed that many chunks elsewhere (another
        engine, before a failure or a drain); it starts at that chunk after rebuilding its
        cache from their latents, like a stream preempted by dropping (sink + window pages).
        `reserved`: a server's intake already gave it a place by `admission` on a published
        view (qvg_serve/serve/intake.py), so neither KV pressure nor a full queue rejects it
        now (the queue may then hold a few more than `max_waiting`: streams preempted since)."""
        if not 0 <= resume_chunks < (spec.target_chunks or resume_chunks + 1):
            raise ValueError(
                f"resume_chunks = {resume_chunks}; use 0 <= resume_chunks < target_chunks "
                f"({spec.target_chunks}): a stream with every chunk committed is finished"
            )
        if spec.stream_id in self.streams or spec.stream_id in self.ended:
            return Admission(False, RejectReason.DUPLICATE)
        view = self.intake_view(refusing and not reserved)
        adm = admission(spec, view if not reserved else replace(view, waiting=0))
        if not adm.accepted:
            self.count_rejection(adm.reason)
            return adm
        self._seq += 1
        s = Stream(spec, self._seq)
        s.record(step, Event.SUBMITTED)
        if resume_chunks:
            self._resume_from(s, resume_chunks, step)
        self.streams[spec.stream_id] = s
        heapq.heappush(self._waiting, (-spec.priority, s.seq, s))
        self.n_waiting += 1
        return Admission(True)

    def intake_view(self, refusing: bool) -> IntakeView:
        return IntakeView(self.config, self.bf16_capacity, refusing, self.n_waiting)

    def count_rejection(self, reason: str) -> None:
        """Count a rejected submit (also one a server's intake answered without a step)."""
        if reason == RejectReason.KV_PRESSURE:
            self.ops.counters[Rung.REFUSE] += 1
        elif reason == RejectReason.QUEUE_FULL:
            self.ops.counters[RejectReason.QUEUE_FULL] += 1

    def _resume_from(self, s: Stream, chunks: int, step: int) -> None:
        """The whole history is rebuilt when one recompute pass can hold it (max_batch_tokens)
        and it takes at most a quarter of the arena in BF16 (the ladder encodes it after);
        else sink + window, and the stream is degraded."""
        cfg = self.config
        n = chunks * s.spec.pages_per_chunk
        room = min(cfg.max_batch_tokens // s.spec.page_tokens, self.bf16_capacity // 4)
        keep = min(n, max(cfg.sink_pages + cfg.window_pages, room))
        s.chunk, s.rebuild, s.dropped_pages = chunks, keep, n - keep
        s.flags.add(Flag.RECOMPUTE)
        if n > keep:
            s.flags.add(Flag.DEGRADED)
        s.record(step, Event.RESTORE, f"resumed at chunk {chunks}, rebuild {keep} pages")

    def stop(self, stream_id: int, state: StreamState, reason: str, step: int) -> bool:
        """End a live stream now (cancel, close); False if it is unknown or already ended."""
        s = self.streams.get(stream_id)
        if s is None:
            return False
        self.end(s, state, reason, step)
        return True

    def pause(self, stream_id: int, paused: bool, step: int) -> bool:
        """Client pause or backpressure (paused) / resume (not paused). Idle keeps its pages."""
        s = self.streams.get(stream_id)
        if s is None or s.paused == paused:
            return False
        s.paused = paused
        if paused and s.state is StreamState.RUNNING:
            s.state = StreamState.IDLE
            s.record(step, Event.IDLE)
            self.ops.touch(s)  # idle: now a candidate for offload
        elif not paused and s.state is StreamState.IDLE:
            s.state = StreamState.RUNNING
            s.record(step, Event.ACTIVE)
            self.queue.join(s)
        return True

    def get(self, stream_id: int) -> Stream | EndedStream | None:
        """Live stream, or the summary of an ended one, or None."""
        return self.streams.get(stream_id) or self.ended.get(stream_id)

    # -- admission and resume (steps 1 and 2 of schedule()) ------------------------------------

    def resume(self, step: int) -> None:
        """PREEMPTED -> RUNNING for the best preempted stream, if the pool is below low."""
        waiting = [s for s in self.ops.preempted.values() if not s.paused]
        if not waiting:
            return
        s = min(waiting, key=lambda x: (-x.spec.priority, x.preempted_at, x.seq))
        back = s.rebuild if Flag.RECOMPUTE in s.flags else s.n_pages() - s.gpu_pages
        cost = back * self.ops.page_bytes[Format.BF16]  # upper bound: CPU pages may be quantized
        if s.plans or not self.book.fits_cap(s.spec.tenant, back):
            return
        if self.ladder.projected_used() + cost > self.ladder.limit(self.config.low_watermark):
            return
        del self.ops.preempted[s.id]
        s.state = StreamState.RUNNING
        s.record(step, Event.RESTORE)
        self.queue.join(s)

    def admit(self, now: float, fx: Effects) -> tuple[int, ...]:
        """WAITING -> RUNNING while memory and tenant caps allow (a few per step). A stream
        that does not fit starts rungs 1-3 (never a loss for others) and waits for them."""
        out: list[int] = []
        skipped: list[Stream] = []
        used = self.ladder.projected_used()
        high = self.ladder.limit(self.config.high_watermark)
        bf16 = self.ops.page_bytes[Format.BF16]
        while not self.ops.preempted and len(out) < ADMIT_PER_STEP:
            s = self._pop_waiting()
            if s is None:
                break
            first = (self.config.sink_pages + s.spec.pages_per_chunk) * bf16
            if used + first > high and self.admitted:  # alone, it waits for nobody
                skipped.append(s)
                need = used + first - self.ladder.limit(self.config.low_watermark)
                self.ladder.relieve(need, self.admitted.values(), (), LOSSLESS, None, fx)
                break
            if not self.book.fits_cap(s.spec.tenant, s.spec.pages_per_chunk):
                skipped.append(s)
                continue
            if not self.book.fits_lease(s.spec):  # cluster-wide cap (tenants.py)
                skipped.append(s)
                continue
            if self.footprints.gate and self.admitted and not self.footprints.fits(s.spec):
                skipped.append(s)  # its history would not fit at the deep format: it waits
                break
            used += first
            self._start(s, now, fx.step)
            out.append(s.id)
        for s in skipped:
            heapq.heappush(self._waiting, (-s.spec.priority, s.seq, s))
            self.n_waiting += 1
        return tuple(out)

    def _pop_waiting(self) -> Stream | None:
        """Best waiting stream (highest priority, then oldest), removed from the queue."""
        while self._waiting:
            _, _, s = heapq.heappop(self._waiting)
            if s.state is StreamState.WAITING:
                self.n_waiting -= 1
                return s
        return None

    def _start(self, s: Stream, now: float, step: int) -> None:
        """WAITING -> RUNNING (or IDLE when the client paused it while it waited)."""
        s.state = StreamState.IDLE if s.paused else StreamState.RUNNING
        s.started_at = now
        self.admitted[s.id] = s
        self.footprints.add(s.spec)
        self.book.add_stream(s)
        s.record(step, Event.ADMITTED)
        if s.state is StreamState.RUNNING:
            self.queue.join(s)

    def drain(self) -> tuple[tuple[int, ...], tuple[tuple[int, str], ...]]:
        """(pages freed, (stream, reason) ended) since the last call; both lists start over."""
        out = tuple(self.freed), tuple(self.ended_since)
        self.freed, self.ended_since = [], []
        return out

    # -- the end -------------------------------------------------------------------------------

    def end(self, s: Stream, state: StreamState, reason: str, step: int) -> None:
        """`s` ends in final `state`: plans aborted, every page released, summary kept."""
        if s.state is StreamState.WAITING:
            self.n_waiting -= 1  # its heap entry is skipped lazily
        self.ops.abort_stream(s)
        self.ops.preempted.pop(s.id, None)
        self.ops.dirty.pop(s.id, None)
        self.freed.extend(self.alloc.release_stream(s.id))
        self.book.add_pages(s, -s.gpu_pages)
        if self.admitted.pop(s.id, None) is not None:
            self.book.remove_stream(s)
            self.footprints.remove(s.id)
        s.reserved = ()
        s.segments = []
        s.changed()
        s.state = state
        s.end_reason = reason
        s.version += 1
        s.record(step, Event(state.value), reason)
        del self.streams[s.id]
        degraded = Flag.DEGRADED in s.flags
        summary = EndedStream(
            s.id, s.spec.tenant, state.value, reason, s.chunk, degraded, tuple(s.history)
        )
        self.ended[s.id] = summary
        self.ended_since.append((s.id, reason))
        while len(self.ended) > KEEP_ENDED:
            self.ended.popitem(last=False)
