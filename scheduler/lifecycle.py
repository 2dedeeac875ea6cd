"""Stream lifecycle outside the step: submit, cancel, close, pause, and how streams end.

    submit -> WAITING --admit--> RUNNING <--pause/unpause--> IDLE
                 |                  |  ^                       |
                 | cancel           |  +---- resume ----+      |
                 v                  v                   |      v
             CANCELLED     FINISHED / FAILED        PREEMPTED (ladder rung 5)

Every end releases all of the stream's pages at once (aborting its pending plans first) and
leaves an EndedStream with the reason.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict

from .config import SchedulerConfig
from .output import Admission, EndedStream
from .pages import PageAllocator
from .rungs import PoolOps
from .runqueue import RunQueue
from .stream import Event, Flag, Stream, StreamSpec, StreamState
from .tenants import TenantBook

KEEP_ENDED = 4096
"""Ended streams remembered for status queries (oldest forgotten first)."""


class Lifecycle:
    """Stream registry and the transitions clients cause; the Scheduler extends it."""

    def __init__(self, config: SchedulerConfig, alloc: PageAllocator) -> None:
        self.config = config
        self.alloc = alloc
        self.book = TenantBook(config)
        self.ops = PoolOps(config, alloc, book=self.book)
        self.queue = RunQueue()
        self.streams: dict[int, Stream] = {}  # every stream not ended
        self.admitted: dict[int, Stream] = {}  # running, idle or preempted
        self.ended: OrderedDict[int, EndedStream] = OrderedDict()
        self._waiting: list[tuple[int, int, Stream]] = []  # heap: (-priority, seq, stream)
        self.n_waiting = 0
        self.step = 0
        self.refusing = False
        self._seq = 0
        self._freed: list[int] = []  # pages freed outside schedule(), reported by the next one
        self._ended_since: list[tuple[int, str]] = []
        bf16_per_block = alloc.layout.block_bytes // alloc.layout.page_bytes["bf16"]
        self.bf16_capacity = alloc.layout.gpu_blocks * bf16_per_block

    # -- client actions ------------------------------------------------------------------------

    def submit(self, spec: StreamSpec, resume_chunks: int = 0) -> Admission:
        """Queue a new stream, or reject it with a reason (the API's 429 + Retry-After).

        `resume_chunks` > 0: the stream already committed that many chunks elsewhere (another
        engine, before a failure or a drain); it starts at that chunk after rebuilding its
        cache from their latents, like a stream preempted by dropping (sink + window pages)."""
        cfg = self.config
        if not 0 <= resume_chunks < (spec.target_chunks or resume_chunks + 1):
            raise ValueError(
                f"resume_chunks = {resume_chunks}; use 0 <= resume_chunks < target_chunks "
                f"({spec.target_chunks}): a stream with every chunk committed is finished"
            )
        if spec.stream_id in self.streams or spec.stream_id in self.ended:
            return Admission(False, "duplicate")
        least = cfg.sink_pages + cfg.window_pages + spec.pages_per_chunk
        cap = cfg.tenant(spec.tenant).page_cap
        if spec.chunk_tokens > cfg.max_batch_tokens or least > min(
            self.bf16_capacity, cap if cap is not None else least
        ):
            return Admission(False, "too_large")
        if self.refusing:
            self.ops.counters["refuse"] += 1
            return Admission(False, "kv_pressure", cfg.retry_after_s)
        if self.n_waiting >= cfg.max_waiting:
            self.ops.counters["queue_full"] += 1
            return Admission(False, "queue_full", cfg.retry_after_s)
        self._seq += 1
        s = Stream(spec, self._seq)
        s.record(self.step, Event.SUBMITTED)
        if resume_chunks:
            self._resume_from(s, resume_chunks)
        self.streams[spec.stream_id] = s
        heapq.heappush(self._waiting, (-spec.priority, s.seq, s))
        self.n_waiting += 1
        return Admission(True)

    def _resume_from(self, s: Stream, chunks: int) -> None:
        n = chunks * s.spec.pages_per_chunk
        keep = min(n, self.config.sink_pages + self.config.window_pages)
        s.chunk, s.rebuild, s.dropped_pages = chunks, keep, n - keep
        s.flags.add(Flag.RECOMPUTE)
        if n > keep:
            s.flags.add(Flag.DEGRADED)
        s.record(self.step, Event.RESTORE, f"resumed at chunk {chunks}, rebuild {keep} pages")

    def cancel(self, stream_id: int, reason: str = "cancelled") -> bool:
        """End a stream now and free its pages; False if it is unknown or already ended."""
        s = self.streams.get(stream_id)
        if s is None:
            return False
        self._end(s, StreamState.CANCELLED, reason)
        return True

    def close(self, stream_id: int) -> bool:
        """The client is done with an open-ended stream: it finishes, pages freed now."""
        s = self.streams.get(stream_id)
        if s is None:
            return False
        self._end(s, StreamState.FINISHED, "closed")
        return True

    def pause(self, stream_id: int, paused: bool = True) -> bool:
        """Client pause or backpressure (paused) / resume (not paused). Idle keeps its pages."""
        s = self.streams.get(stream_id)
        if s is None or s.paused == paused:
            return False
        s.paused = paused
        if paused and s.state is StreamState.RUNNING:
            s.state = StreamState.IDLE
            s.record(self.step, Event.IDLE)
            self.ops.touch(s)  # idle: now a candidate for offload
        elif not paused and s.state is StreamState.IDLE:
            s.state = StreamState.RUNNING
            s.record(self.step, Event.ACTIVE)
            self.queue.join(s)
        return True

    def get(self, stream_id: int) -> Stream | EndedStream | None:
        """Live stream, or the summary of an ended one, or None."""
        return self.streams.get(stream_id) or self.ended.get(stream_id)

    # -- transitions the step causes -----------------------------------------------------------

    def _pop_waiting(self) -> Stream | None:
        """Best waiting stream (highest priority, then oldest), removed from the queue."""
        while self._waiting:
            _, _, s = heapq.heappop(self._waiting)
            if s.state is StreamState.WAITING:
                self.n_waiting -= 1
                return s
        return None

    def _unpop_waiting(self, s: Stream) -> None:
        heapq.heappush(self._waiting, (-s.spec.priority, s.seq, s))
        self.n_waiting += 1

    def _start(self, s: Stream, now: float) -> None:
        """WAITING -> RUNNING (or IDLE when the client paused it while it waited)."""
        s.state = StreamState.IDLE if s.paused else StreamState.RUNNING
        s.started_at = now
        self.admitted[s.id] = s
        self.book.add_stream(s.spec.tenant)
        s.record(self.step, Event.ADMITTED)
        if s.state is StreamState.RUNNING:
            self.queue.join(s)

    def _end(self, s: Stream, state: StreamState, reason: str) -> None:
        if s.state is StreamState.WAITING:
            self.n_waiting -= 1  # its heap entry is skipped lazily
        self.ops.abort_stream(s)
        self.ops.preempted.pop(s.id, None)
        self.ops.dirty.pop(s.id, None)
        self._freed.extend(self.alloc.release_stream(s.id))
        self.book.add_pages(s, -s.gpu_pages)
        if self.admitted.pop(s.id, None) is not None:
            self.book.remove_stream(s.spec.tenant)
        s.segments = []
        s.changed()
        s.state = state
        s.end_reason = reason
        s.version += 1
        s.record(self.step, Event(state.value), reason)
        del self.streams[s.id]
        degraded = Flag.DEGRADED in s.flags
        summary = EndedStream(
            s.id, s.spec.tenant, state.value, reason, s.chunk, degraded, tuple(s.history)
        )
        self.ended[s.id] = summary
        self._ended_since.append((s.id, reason))
        while len(self.ended) > KEEP_ENDED:
            self.ended.popitem(last=False)
