"""The scheduler: one `schedule()` decides a step, one `update()` takes the runner's report.

Standard library only. The engine owns the loop; the runner owns tensors; this owns decisions.
The streams and their transitions live in the `Lifecycle` it owns (lifecycle.py), the
pressure ladder in its `Ladder` (ladder.py) acting through `PoolOps` (rungs.py).
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict
from collections.abc import Callable

from .admission import Footprints
from .config import SchedulerConfig
from .headroom import Headroom
from .ladder import LOSSLESS, LOSSY, Ladder
from .layout import OutOfPages
from .lifecycle import IntakeView, Lifecycle
from .output import Admission, BatchItem, Effects, EndedStream, SchedulerOutput, StepResult
from .pages import PageAllocator
from .rungs import PoolOps
from .runqueue import RunQueue
from .stream import Stream, StreamSpec
from .tenants import TenantBook, TenantPages
from .vocab import (
    EncodePolicy,
    EndReason,
    Flag,
    Format,
    PassKind,
    PlanKind,
    Rung,
    StreamState,
    Tier,
    Unit,
)


class Scheduler:
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
        self.config = config
        self.alloc = allocator
        self.clock = clock
        self.book = TenantBook(config)
        self.ops = PoolOps(config, allocator, book=self.book)
        self.ladder = Ladder(config, self.ops, self.book)
        self.queue = RunQueue()
        self.footprints = Footprints(config, allocator.layout)
        self.lifecycle = Lifecycle(
            config, allocator, self.ops, self.ladder, self.queue, self.footprints
        )
        self.room = Headroom(config, self.ops, self.lifecycle.admitted, self.ladder.total)
        # eager policy: commit pages reserved from a chunk's first pass, lossless first
        self._reserve = config.encode_policy == EncodePolicy.EAGER
        self.counters: Counter[str] = self.ops.counters
        self.step = 0
        self.refusing = False
        self._batch: dict[int, BatchItem] = {}
        self._deadline_slots = int(config.max_batch_streams * config.deadline_share)
        self._lossy_dry = -1  # step whose pool-wide lossy search found nothing (skip repeats)
        self._lossless_done = -1  # step whose pool-wide rungs 1-3 already ran for a commit

    # -- client actions (the lifecycle makes the transitions, at the last step) ----------------

    def submit(self, spec: StreamSpec, resume_chunks: int = 0, reserved: bool = False) -> Admission:
        """Queue a new stream, or reject it with a reason (the API's 429 + Retry-After).
        `resume_chunks` > 0: it committed that many chunks elsewhere; `reserved`: an intake
        already admitted it on a published view (see Lifecycle.submit)."""
        return self.lifecycle.submit(spec, self.step, self.refusing, resume_chunks, reserved)

    def intake_view(self) -> IntakeView:
        """What `admission` of a new stream depends on now (for a server's intake)."""
        return self.lifecycle.intake_view(self.refusing)

    def count_rejection(self, reason: str) -> None:
        self.lifecycle.count_rejection(reason)

    def cancel(self, stream_id: int, reason: str = EndReason.CANCELLED) -> bool:
        """End a stream now and free its pages; False if it is unknown or already ended."""
        return self.lifecycle.stop(stream_id, StreamState.CANCELLED, reason, self.step)

    def close(self, stream_id: int) -> bool:
        """The client is done with an open-ended stream: it finishes, pages freed now."""
        return self.lifecycle.stop(stream_id, StreamState.FINISHED, EndReason.CLOSED, self.step)

    def pause(self, stream_id: int, paused: bool = True) -> bool:
        """Client pause or backpressure (paused) / resume (not paused). Idle keeps its pages."""
        return self.lifecycle.pause(stream_id, paused, self.step)

    def get(self, stream_id: int) -> Stream | EndedStream | None:
        """Live stream, or the summary of an ended one, or None."""
        return self.lifecycle.get(stream_id)

    @property
    def streams(self) -> dict[int, Stream]:
        """Every stream not ended, by id (read-only for callers)."""
        return self.lifecycle.streams

    @property
    def admitted(self) -> dict[int, Stream]:
        """Running, idle or preempted streams, by id."""
        return self.lifecycle.admitted

    @property
    def ended(self) -> OrderedDict[int, EndedStream]:
        """Summaries of the last KEEP_ENDED ended streams, oldest first."""
        return self.lifecycle.ended

    def streams_that_fit(self, spec: StreamSpec) -> int:
        """How many more streams like `spec` admission takes now (the capacity endpoint)."""
        return self.footprints.streams_that_fit(spec)

    def tenant_pages(self) -> dict[str, TenantPages]:
        """Held and wanted GPU pages per capped tenant (what a server's leases follow)."""
        return self.book.pages(self.streams.values())

    def set_page_leases(self, leases: dict[str, int] | None) -> None:
        """Each capped tenant's share of a cluster-wide cap: at most min(page_cap, lease) GPU
        pages here, 0 without a lease; None: the configured caps alone (tenants.py)."""
        self.book.leases = None if leases is None else dict(leases)

    @property
    def n_waiting(self) -> int:
        """Streams submitted and not yet admitted."""
        return self.lifecycle.n_waiting

    def reconfigure(self, config: SchedulerConfig) -> None:
        """New tunables from the next `schedule()` on (a live config change, no restart).
        Every policy part reads the config at decision time, so swapping it is the change
        (values derived from it are recomputed); streams keep their pages and projections,
        and sink/window changes apply to later decisions."""
        for part in (self, self.book, self.ops, self.ladder, self.lifecycle, self.room):
            part.config = config
        self.room.retune(config)
        self.footprints.retune(config)
        self._reserve = config.encode_policy == EncodePolicy.EAGER
        self._deadline_slots = int(config.max_batch_streams * config.deadline_share)

    # -- one step ------------------------------------------------------------------------------

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
        life = self.lifecycle
        life.resume(self.step)
        admitted = life.admit(now, fx)
        self._batch = {item.stream_id: item for item in self._select(fx, now)}
        self.room.eager(fx)
        use, self.refusing = self.ladder.pressure(life.admitted.values(), self._batch, fx)
        freed, ended = life.drain()
        freed += tuple(fx.freed)
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
        streams = self.lifecycle.streams
        for sid, item in self._batch.items():
            s = streams.get(sid)
            if s is None:
                continue  # ended meanwhile (cancel): its pages are already released
            if sid not in failed and sid in advanced:
                self._advance(s, item)
            elif item.new_pages and item.new_pages != s.reserved:  # a reservation stays
                self.lifecycle.freed.extend(self.alloc.release(sid, item.new_pages))
                self.book.add_pages(s, -len(item.new_pages))
        for sid, reason in failed.items():
            if sid in streams:
                self.lifecycle.end(streams[sid], StreamState.FAILED, reason, self.step)
        self._batch = {}

    # -- steps of schedule() -------------------------------------------------------------------

    def _advance(self, s: Stream, item: BatchItem) -> None:
        if item.kind == PassKind.DENOISE:
            s.step += 1
            return
        s.append(list(item.new_pages), self.config.sink_pages)
        if item.new_pages == s.reserved:
            s.reserved = ()
        self.ops.touch(s)
        if item.kind == PassKind.RECOMPUTE:
            s.flags.discard(Flag.RECOMPUTE)
            s.rebuild = 0
            return
        s.chunk += 1
        s.step = 0
        if s.done:
            self.lifecycle.end(s, StreamState.FINISHED, EndReason.COMPLETED, self.step)
        elif s.spec.target_fps is not None and s.state is StreamState.RUNNING:
            self.queue.push(s)  # its deadline moved to the next chunk

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
            self.lifecycle.end(s, StreamState.FAILED, EndReason.KV_EXHAUSTED, self.step)

    def _prepare(self, s: Stream, fx: Effects, batch: set[int], tokens: int) -> BatchItem | None:
        """`s`'s pass this step, or None if it must wait (reload, or no room for its pages)."""
        move, gpu = PlanKind.MOVE, Tier.GPU  # locals: an enum attribute read costs ~0.3 us
        if any(self.ops.pending[p].plan.kind == move for p in s.plans):
            return None
        if any(seg.tier != gpu for seg in s.segments):
            self._reload(s, fx, batch)
            return None
        kind, n = PassKind.DENOISE, 0
        if Flag.RECOMPUTE in s.flags:
            kind, n = PassKind.RECOMPUTE, s.rebuild
        elif s.committing:
            kind, n = PassKind.COMMIT, 0 if s.reserved else s.spec.pages_per_chunk
        elif self._reserve and not s.reserved:  # the chunk's commit pages, from its first pass
            got = self._allocate(s, s.spec.pages_per_chunk, fx, batch)
            if got is None and not self.config.denoise_unreserved:
                return None  # the batch runs without it (never a drop for a reservation)
            # else a denoise pass writes no pages: it runs, and the reservation is tried again
            # at the next pass (the plans just ordered to make room land in between); the
            # commit pass itself never runs without its pages
            s.reserved = got or ()
        new: tuple[int, ...] = s.reserved if kind == PassKind.COMMIT else ()
        if n:
            got = self._allocate(s, n, fx, batch)
            if got is None:
                return None
            new = got
        return BatchItem(s.id, kind, s.chunk, s.step, tokens, s.table(), new)

    def _reload(self, s: Stream, fx: Effects, batch: set[int]) -> None:
        if self.ops.reload(s, fx):
            return
        gpu = Tier.GPU
        need = sum(len(x.pages) for x in s.segments if x.tier != gpu)
        room = self.book.cap_room(s.spec.tenant)
        if room is not None and room < need:
            self._make_room(s, need - room, fx, batch, Unit.PAGES)
        self._make_room(s, need * self.ops.page_bytes[Format.BF16], fx, batch, Unit.BYTES)
        self.ops.reload(s, fx)

    def _allocate(self, s: Stream, n: int, fx: Effects, batch: set[int]) -> tuple[int, ...] | None:
        """`n` new BF16 pages for `s`, making room under its tenant cap and in the pool."""
        room = self.book.cap_room(s.spec.tenant)
        if room is not None and room < n:
            if not self._make_room(s, n - room, fx, batch, Unit.PAGES):
                return None  # an offload of its tenant's pages commits by the next step
            if not self.book.fits_cap(s.spec.tenant, n) and Rung.DROP in self.config.rungs:
                self.ops.drop(s, fx)  # last resort: its own middle history
            if not self.book.fits_cap(s.spec.tenant, n):
                return None
        bf16 = Format.BF16
        if self._reserve and not self.room.encode_room(n) and self._encode_first(s, n, fx, batch):
            return None  # the last free blocks go to an encode's destination; it waits a step
        pages = self.alloc.allocate(s.id, bf16, n)
        if isinstance(pages, OutOfPages):
            if not self._make_room(s, n * self.ops.page_bytes[bf16], fx, batch, Unit.BYTES):
                return None
            pages = self.alloc.allocate(s.id, bf16, n)
            lossy = not (self._reserve and self.room.may_wait(s, batch, n * self.room.bf16))
            if isinstance(pages, OutOfPages) and Rung.DROP in self.config.rungs and lossy:
                self.ops.drop(s, fx)  # nobody else may lose more: its own middle history
                pages = self.alloc.allocate(s.id, bf16, n)
            if isinstance(pages, OutOfPages):
                return None
        self.book.add_pages(s, n)
        return pages

    def _encode_first(self, s: Stream, n: int, fx: Effects, batch: set[int]) -> bool:
        """Order lossless plans (encodes first) before `s` takes `n` BF16 pages; True if plans
        are under way or another stream's reserved commit lands first (it ends that stream or
        gives it encodable pages): `s` waits, instead of leaving the pool unable to encode."""
        if self._lossless_done != self.step:
            need = n * self.ops.page_bytes[Format.BF16]
            pool = self.lifecycle.admitted.values()
            self.ladder.relieve(need, pool, batch | {s.id}, LOSSLESS, s, fx)
            self._lossless_done = self.step
        return self.ops.pending_frees > 0 or self.room.commit_ahead(s, batch)

    def _make_room(self, s: Stream, need: int, fx: Effects, batch: set[int], unit: Unit) -> bool:
        """Lossless rungs first; if their plans (next step) cannot cover `need`, lossy ones
        (at once). True if room may be there now (the caller retries)."""
        tenant = s.spec.tenant if unit == Unit.PAGES else None
        exclude = batch | {s.id}
        pending = self.ops.pending_frees if unit == Unit.BYTES else 0
        pool = self.lifecycle.admitted.values()
        got = 0
        if tenant is not None or self._lossless_done != self.step:
            got = self.ladder.relieve(need, pool, exclude, LOSSLESS, s, fx, unit, tenant)
            # once a step: later commits of this step wait on the same pending plans
            self._lossless_done = self.step if tenant is None else self._lossless_done
        if pending + got >= need:
            return False  # wait for the plans to commit: cheaper than losing history
        if (
            self._reserve
            and (got or unit == Unit.BYTES)
            and self.room.may_wait(s, batch, need, unit)
        ):
            return False  # lossless progress is under way and everything fits once it lands
        if tenant is None and self._lossy_dry == self.step:
            return True  # an O(streams) search already came back empty this step
        if not self.ladder.relieve(need - got, pool, exclude, LOSSY, s, fx, unit, tenant):
            self._lossy_dry = self.step if tenant is None else self._lossy_dry
        return True


def _runnable(s: Stream) -> bool:
    return s.state is StreamState.RUNNING
