"""The ladder's actions on one stream, and the registry of pending plans.

Each action touches only segments not locked by a pending plan and returns its `Gain`: bytes
of the GPU pool it frees (after its plan commits, or at once for drops) and GPU pages it takes
off the tenant's quota. Every action is counted per rung and recorded in the stream's history.
"""

from __future__ import annotations

from collections import Counter
from typing import NamedTuple

from . import page_audit
from .config import SchedulerConfig
from .layout import OutOfPages, Plan
from .output import Effects, Order
from .pages import PageAllocator
from .stream import Event, Flag, Segment, Stream, StreamState
from .tenants import TenantBook
from .vocab import Action, EncodePolicy, Format, PlanKind, Rung, Tier


class Gain(NamedTuple):
    bytes: int
    pages: int


NOTHING = Gain(0, 0)


class Pending(NamedTuple):
    plan: Plan
    stream: Stream
    action: Action
    frees: int
    """GPU bytes its commit frees (sources; destinations are already counted as used)."""


class PoolOps:
    """Begins, commits and aborts plans; drops pages; keeps the per-rung counters."""

    def __init__(self, config: SchedulerConfig, alloc: PageAllocator, book: TenantBook) -> None:
        self.config = config
        self.alloc = alloc
        self.book = book
        self.pending: dict[int, Pending] = {}
        self.pending_frees = 0  # GPU bytes the pending plans free when they commit
        self.counters: Counter[str] = Counter()
        self.preempted: dict[int, Stream] = {}  # PREEMPTED streams, resumed oldest first
        # Streams whose pages changed since rungs 1-3 last found nothing to do on them: the
        # lossless rungs look only here, so a step costs O(changed streams), not O(streams).
        self.dirty: dict[int, Stream] = {}
        # Streams whose pages changed since eager encoding last looked at them (eager policy).
        self.eager: dict[int, Stream] = {}
        layout = alloc.layout
        self.page_bytes = dict(layout.page_bytes)
        self.codebook_bytes = {f: layout.codebook_bytes.get(f, 0) for f in layout.page_bytes}
        self.has_cpu = layout.cpu_blocks > 0

    # -- plan registry -------------------------------------------------------------------------

    def _open(
        self, plan: Plan, s: Stream, segs: list[Segment], action: Action, frees: int, fx: Effects
    ) -> Gain:
        """Register `plan`; its Gain: projected GPU bytes (frees - reserved dst) and pages."""
        for seg in segs:
            seg.plan = plan.id
        s.plans.add(plan.id)
        self.pending[plan.id] = Pending(plan, s, action, frees)
        self.pending_frees += frees
        fx.orders.append(Order(plan, s.id, action))
        self.counters[action] += 1
        s.record(fx.step, Event(action), _pages(segs))
        gpu_dst = page_audit.plan_bytes(plan) if plan.tier == Tier.GPU else 0
        moved = sum(len(x.pages) for x in segs) if plan.kind == PlanKind.MOVE else 0
        return Gain(frees - gpu_dst, moved if plan.tier == Tier.CPU else -moved)

    def finish(self, plan_id: int, ok: bool, step: int) -> None:
        """Commit (ok) or abort a pending plan; unknown ids (a cancelled stream's) are ignored."""
        pend = self.pending.pop(plan_id, None)
        if pend is None:
            return
        plan, stream = pend.plan, pend.stream
        self.pending_frees -= pend.frees
        self._arrived(pend)
        stream.plans.discard(plan_id)
        segs = [s for s in stream.segments if s.plan == plan_id]
        for seg in segs:
            seg.plan = None
        self.touch(stream)
        if not ok:
            self.alloc.abort(plan)
            stream.record(step, Event.PLAN_FAILED, f"{pend.action} plan {plan_id}")
            self.counters[Event.PLAN_FAILED] += 1
            return
        self.alloc.commit(plan)
        n = sum(len(s.pages) for s in segs)
        for seg in segs:
            if plan.kind == PlanKind.ENCODE:
                seg.fmt = plan.fmt or seg.fmt
            else:
                seg.tier = plan.tier
        if plan.kind == PlanKind.MOVE:
            self.book.add_pages(stream, n if plan.tier == Tier.GPU else -n)

    def _arrived(self, pend: Pending) -> None:
        """A reload is no longer pending: its pages leave the tenant's incoming count."""
        if pend.action == Action.RELOAD:
            self.book.incoming[pend.stream.spec.tenant] -= len(pend.plan.relocations)

    def touch(self, s: Stream) -> None:
        """`s`'s pages or state changed: the lossless rungs should look at it again."""
        self.dirty[s.id] = s
        self.eager[s.id] = s

    def abort_stream(self, stream: Stream) -> None:
        """Abort every pending plan of `stream` (it is ending)."""
        for plan_id in sorted(stream.plans):
            pend = self.pending.pop(plan_id)
            self.pending_frees -= pend.frees
            self._arrived(pend)
            self.alloc.abort(pend.plan)
        stream.plans.clear()
        for seg in stream.segments:
            seg.plan = None

    # -- rungs 1 and 2: encode, re-encode -------------------------------------------------------

    def encode(self, s: Stream, fx: Effects, min_pages: int | None = None) -> Gain:
        """Rung 1 (and eager encoding): the oldest run of BF16 pages between sink and window
        becomes one span, of the deep format under the eager policy, else the early one."""
        run = self._bf16_run(s, min_pages or self.config.min_span_pages)
        if run is None:
            return NOTHING
        first, last = run
        seg = Segment([p for x in s.segments[first:last] for p in x.pages], Format.BF16)
        s.segments[first:last] = [seg]  # merging free BF16 runs changes no page
        eager = self.config.encode_policy == EncodePolicy.EAGER
        # eager spans are eager_span_pages long (what admission projects, and what the free
        # blocks kept for an encode's destination hold); the rest waits for the next span
        cap = self.config.eager_span_pages if eager else self.config.max_span_pages
        seg = s.split(first, cap)
        fmt = self.config.deep_format if eager else self.config.early_format
        plan = self.alloc.begin_encode(s.id, seg.pages, fmt)
        if isinstance(plan, OutOfPages):
            return NOTHING
        return self._open(plan, s, [seg], Action.ENCODE, self._bytes([seg]), fx)

    def _bf16_run(self, s: Stream, least: int) -> tuple[int, int] | None:
        """(first, last + 1) of the first run of free GPU BF16 middle segments, long enough."""
        first, last = s.middle(self.config.sink_pages, self.config.window_pages)
        start, count = None, 0
        bf16, gpu = Format.BF16, Tier.GPU
        for i in range(first, last):
            seg = s.segments[i]
            if seg.fmt == bf16 and seg.tier == gpu and seg.free():
                start = i if start is None else start
                count += len(seg.pages)
                continue
            if start is not None and count >= least:
                return start, i
            start, count = None, 0
        if start is not None and count >= least:
            return start, last
        return None

    def reencode(self, s: Stream, fx: Effects) -> Gain:
        """Rung 2: each run of adjacent free GPU spans of the early format becomes one span of
        the deep format (merging spans amortises codebooks: fewer, longer spans)."""
        early, deep = self.config.early_format, self.config.deep_format
        if early == deep:
            return NOTHING
        total, runs, run, gpu = NOTHING, [], [], Tier.GPU
        for i, x in enumerate(s.segments):
            if x.fmt == early and x.tier == gpu and x.free():
                run.append(i)
            elif run:
                runs.append(run)
                run = []
        runs.extend([run] if run else [])
        for run in reversed(runs):  # right to left: indices of earlier runs stay valid
            while (
                len(run) > 1
                and sum(len(s.segments[i].pages) for i in run) > self.config.max_span_pages
            ):
                run = run[:-1]  # the oldest spans merge first; the rest wait for a later pass
            seg = Segment([p for i in run for p in s.segments[i].pages], early)
            plan = self.alloc.begin_encode(s.id, seg.pages, deep)
            if isinstance(plan, OutOfPages):
                continue
            frees = self._bytes([s.segments[i] for i in run])
            s.segments[run[0] : run[-1] + 1] = [seg]
            total = _add(total, self._open(plan, s, [seg], Action.REENCODE, frees, fx))
        return total

    # -- rung 3: offload, and the reload that undoes it ----------------------------------------

    def offload(self, s: Stream, fx: Effects) -> Gain:
        """Rung 3: free quantized GPU middle segments move to the CPU tier (BF16 ones too when
        encoding is off: BF16-only paging)."""
        if not self.has_cpu:
            return NOTHING
        first, last = s.middle(self.config.sink_pages, self.config.window_pages)
        any_fmt = Rung.ENCODE not in self.config.rungs
        gpu, bf16 = Tier.GPU, Format.BF16
        segs = [
            x
            for x in s.segments[first:last]
            if x.tier == gpu and x.free() and (any_fmt or x.fmt != bf16)
        ]
        return self._move(s, segs, Tier.CPU, Action.OFFLOAD, fx)

    def reload(self, s: Stream, fx: Effects) -> bool:
        """Every free CPU segment of `s` goes back to the GPU; False if they do not fit."""
        gpu = Tier.GPU
        segs = [x for x in s.segments if x.tier != gpu and x.free()]
        n = sum(len(x.pages) for x in segs)
        if not segs or not self.book.fits_cap(s.spec.tenant, n):
            return False
        return self._move(s, segs, gpu, Action.RELOAD, fx) != NOTHING

    def _move(
        self, s: Stream, segs: list[Segment], tier: Tier, action: Action, fx: Effects
    ) -> Gain:
        if not segs:
            return NOTHING
        pages = [p for x in segs for p in x.pages]
        plan = self.alloc.begin_move(pages, tier)
        if isinstance(plan, OutOfPages):
            return NOTHING
        frees = self._bytes(segs) if tier == Tier.CPU else 0
        if action == Action.RELOAD:
            self.book.incoming[s.spec.tenant] += len(pages)  # the cap counts them already
        return self._open(plan, s, segs, action, frees, fx)

    def _bytes(self, segs: list[Segment]) -> int:
        """GPU bytes of `segs` (a quantized segment is one span: its codebook counts too)."""
        gpu = Tier.GPU  # a local: the generator reads it per segment
        return sum(
            len(x.pages) * self.page_bytes[x.fmt] + self.codebook_bytes[x.fmt]
            for x in segs
            if x.tier == gpu
        )

    # -- rungs 4 and 5: drop middle history, preempt -------------------------------------------

    def drop(self, s: Stream, fx: Effects) -> Gain:
        """Rung 4: release free middle segments; the stream goes on, marked degraded."""
        first, last = s.middle(self.config.sink_pages, self.config.window_pages)
        segs = [x for x in s.segments[first:last] if x.free()]
        if not segs:
            return NOTHING
        gain = self._release(s, segs, fx)
        s.dropped_pages += sum(len(x.pages) for x in segs)
        s.flags.add(Flag.DEGRADED)
        fx.degraded.append(s.id)
        self.counters[Rung.DROP] += 1
        s.record(fx.step, Event.DROP, _pages(segs))
        return gain

    def preempt(self, s: Stream, fx: Effects) -> Gain:
        """Rung 5: offload the whole stream if the CPU tier holds it, else drop it all.

        A dropped stream is rebuilt later from its committed latents (sink + window pages;
        the middle history is lost, so it comes back degraded).
        """
        if s.plans:
            return NOTHING
        self.release_reserved(s, fx)
        on_gpu = Tier.GPU
        gpu = [x for x in s.segments if x.tier == on_gpu]
        gain = self._move(s, gpu, Tier.CPU, Action.PREEMPT, fx) if self.has_cpu else NOTHING
        if gain == NOTHING:
            n = s.n_pages()
            keep = min(n, self.config.sink_pages + self.config.window_pages)
            gain = self._release(s, list(s.segments), fx)
            s.dropped_pages += n - keep
            s.flags.add(Flag.RECOMPUTE)
            if n > keep:
                s.flags.add(Flag.DEGRADED)
            s.rebuild = keep
            self.counters[Rung.PREEMPT] += 1
            s.record(fx.step, Event.PREEMPT, f"dropped {n} pages, rebuild {keep}")
        s.state = StreamState.PREEMPTED
        s.preempted_at = fx.step
        self.preempted[s.id] = s
        fx.preempted.append(s.id)
        return gain

    def release_reserved(self, s: Stream, fx: Effects) -> int:
        """Give back `s`'s commit reservation (it is preempted: its chunk restarts later)."""
        n = len(s.reserved)
        if n:
            fx.freed.extend(self.alloc.release(s.id, s.reserved))
            self.book.add_pages(s, -n)
            s.reserved = ()
        return n

    def _release(self, s: Stream, segs: list[Segment], fx: Effects) -> Gain:
        pages = [p for x in segs for p in x.pages]
        nbytes = self._bytes(segs)
        gpu = Tier.GPU
        gpu_pages = sum(len(x.pages) for x in segs if x.tier == gpu)
        fx.freed.extend(self.alloc.release(s.id, pages))
        ids = {id(x) for x in segs}
        s.segments = [x for x in s.segments if id(x) not in ids]
        s.changed()
        self.book.add_pages(s, -gpu_pages)
        return Gain(nbytes, gpu_pages)


def _add(a: Gain, b: Gain) -> Gain:
    return Gain(a.bytes + b.bytes, a.pages + b.pages)


def _pages(segs: list[Segment]) -> str:
    return f"{sum(len(s.pages) for s in segs)} pages"
