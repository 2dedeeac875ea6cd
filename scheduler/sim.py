"""Deterministic simulator: a workload replayed against Scheduler + the real PageAllocator.

The runner is simulated: every batch item completes and every plan commits in the step it
was ordered (unless the workload injects failures), and the clock advances `step_seconds` a
step. No randomness here: a workload is a fixed list of events, so a run is reproducible.
Used by tests and by `qvg-serve bench scheduler`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from .config import SchedulerConfig
from .core import Scheduler
from .layout import PoolLayout
from .output import SchedulerOutput, StepResult
from .pages import PageAllocator
from .stream import StreamSpec
from .vocab import Format, PassKind


@dataclass(frozen=True, slots=True)
class Arrival:
    """One client: when it arrives, what it asks, and what it does later."""

    step: int
    """Step at which submit() is called."""
    spec: StreamSpec
    pauses: tuple[tuple[int, int], ...] = ()
    """(chunk, steps), ascending chunks: after committing `chunk` chunks, the client pauses for
    `steps` steps (-1 = forever)."""
    cancel_at: int | None = None
    """Step at which the client cancels (None = never)."""
    close_at: int | None = None
    """Step at which the client closes an open-ended stream (None = never)."""


@dataclass(frozen=True, slots=True)
class Workload:
    arrivals: tuple[Arrival, ...]
    plan_fail_every: int = 0
    """Every n-th plan (by id) fails in the runner (0 = none): exercises abort paths."""
    fail_streams: frozenset[int] = field(default_factory=frozenset)
    """Streams the runner fails on their second chunk's commit pass (an explicit end)."""


class SimResult(NamedTuple):
    steps: int
    rejected: dict[int, str]
    """Stream id -> rejection reason at submit()."""
    ended: dict[int, tuple[str, str]]
    """Stream id -> (final state, reason)."""
    counters: dict[str, int]
    step_seconds: list[float]
    """Wall time of schedule() + update() per step (time.perf_counter)."""
    max_gpu_use: float
    max_resident: int
    """Most admitted streams at once with >= resident_pages pages, none dropped, all on the GPU."""


class Simulator:
    """Scheduler + PageAllocator + a fake clock and runner."""

    def __init__(
        self,
        config: SchedulerConfig,
        layout: PoolLayout,
        workload: Workload,
        step_seconds: float = 0.05,
        debug: bool = True,
        resident_pages: int = 1,
    ) -> None:
        self.resident_pages = resident_pages  # a stream counts as resident from this many pages
        self.now = 0.0
        self.step_seconds = step_seconds
        self.alloc = PageAllocator(layout, debug=debug)
        self.scheduler = Scheduler(config, self.alloc, clock=lambda: self.now)
        self.workload = workload
        self._by_step: dict[int, list[Arrival]] = {}
        for arrival in workload.arrivals:
            self._by_step.setdefault(arrival.step, []).append(arrival)
        self._wake: dict[int, list[int]] = {}  # step -> streams to unpause
        self._next_pause: dict[int, int] = {}  # stream -> index of its next pause
        self._live: dict[int, Arrival] = {}
        self.rejected: dict[int, str] = {}

    def run(
        self, max_steps: int, observe: Callable[[SchedulerOutput], None] | None = None
    ) -> SimResult:
        """Step until every arrival has arrived and ended, or `max_steps`."""
        sched = self.scheduler
        last = max(self._by_step, default=0)
        times: list[float] = []
        max_use, max_resident = 0.0, 0
        while sched.step < max_steps and (sched.step <= last or sched.streams):
            self._client_actions(sched.step)
            t0 = time.perf_counter()
            out = sched.schedule()
            result = self._execute(out)
            sched.update(result)
            times.append(time.perf_counter() - t0)
            self.now += self.step_seconds
            self._pause_after_commits()
            max_use = max(max_use, out.gpu_use)
            max_resident = max(max_resident, self._resident())
            if observe is not None:
                observe(out)
        ended = {i: (e.state, e.reason) for i, e in sched.ended.items()}
        return SimResult(
            sched.step, dict(self.rejected), ended, dict(sched.counters), times, max_use,
            max_resident,
        )  # fmt: skip

    def _client_actions(self, step: int) -> None:
        sched = self.scheduler
        for arrival in self._by_step.get(step, ()):
            answer = sched.submit(arrival.spec)
            if answer.accepted:
                self._live[arrival.spec.stream_id] = arrival
            else:
                self.rejected[arrival.spec.stream_id] = answer.reason
        for sid in self._wake.pop(step, ()):
            sched.pause(sid, False)
        for sid, arrival in list(self._live.items()):
            if sid not in sched.streams:
                del self._live[sid]
            elif arrival.cancel_at is not None and step >= arrival.cancel_at:
                sched.cancel(sid)
            elif arrival.close_at is not None and step >= arrival.close_at:
                sched.close(sid)

    def _execute(self, out: SchedulerOutput) -> StepResult:
        """The simulated runner: everything succeeds except injected failures."""
        every = self.workload.plan_fail_every
        done = [o.plan.id for o in out.orders if not (every and o.plan.id % every == 0)]
        bad = [o.plan.id for o in out.orders if every and o.plan.id % every == 0]
        failed = tuple(
            (b.stream_id, "injected runner failure")
            for b in out.batch
            if b.stream_id in self.workload.fail_streams
            and b.chunk == 1
            and b.kind == PassKind.COMMIT
        )
        gone = {sid for sid, _ in failed}
        advanced = tuple(b.stream_id for b in out.batch if b.stream_id not in gone)
        return StepResult(out.step, advanced, failed, tuple(done), tuple(bad))

    def _pause_after_commits(self) -> None:
        """Pause streams that just committed a chunk listed in their `pauses` (in order)."""
        sched = self.scheduler
        for sid, arrival in self._live.items():
            s = sched.streams.get(sid)
            i = self._next_pause.get(sid, 0)
            if s is None or i >= len(arrival.pauses) or s.chunk < arrival.pauses[i][0]:
                continue
            self._next_pause[sid] = i + 1
            sched.pause(sid, True)
            steps = arrival.pauses[i][1]
            if steps >= 0:
                self._wake.setdefault(sched.step + 1 + steps, []).append(sid)

    def _resident(self) -> int:
        """Admitted streams whose whole history is on the GPU and intact."""
        return sum(
            1
            for s in self.scheduler.admitted.values()
            if not s.flags
            and s.dropped_pages == 0
            and s.gpu_pages - len(s.reserved) == s.n_pages() >= self.resident_pages
        )


def toy_layout(gpu_pages: int, cpu_pages: int = 0) -> PoolLayout:
    """A pool of `gpu_pages` (+ `cpu_pages`) BF16 pages whose item sizes keep Self-Forcing-1.3B
    proportions: bf16 1000 B, qvg-int4 262, qvg-int2 137, a span's codebook 164 (per block:
    1 bf16 page, 3 int4 pages, 7 int2 pages, 6 codebooks)."""
    return PoolLayout(
        block_bytes=1000,
        gpu_blocks=gpu_pages,
        cpu_blocks=cpu_pages,
        page_bytes={Format.BF16: 1000, Format.QVG_INT4: 262, Format.QVG_INT2: 137},
        codebook_bytes={Format.QVG_INT4: 164, Format.QVG_INT2: 164},
    )


def complete(out: SchedulerOutput) -> StepResult:
    """The runner's report when every batch item and every plan of `out` succeeded."""
    return StepResult(
        out.step,
        advanced=tuple(b.stream_id for b in out.batch),
        plans_done=tuple(o.plan.id for o in out.orders),
    )


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile, q in [0, 100]."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, int(-(-q * len(ordered) // 100)) - 1))
    return ordered[rank]
