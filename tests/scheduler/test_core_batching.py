"""schedule(): continuous batching, batch bounds, fair share, deadlines."""

from __future__ import annotations

import math
from collections import Counter

from scheduler.config import Priority, SchedulerConfig
from scheduler.core import Scheduler
from scheduler.pages import PageAllocator
from scheduler.sim import complete, toy_layout
from scheduler.stream import StreamSpec


def pressure(**cfg: object) -> SchedulerConfig:
    """These tests pin round 1's ladder: encodes only under pressure, to the early format."""
    return SchedulerConfig(**{"encode_policy": "pressure", **cfg})  # type: ignore[arg-type]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make(gpu_pages: int = 256, **cfg: object) -> tuple[Scheduler, PageAllocator, Clock]:
    clock = Clock()
    alloc = PageAllocator(toy_layout(gpu_pages))
    return (
        Scheduler(pressure(**cfg), alloc, clock=clock),
        alloc,
        clock,
    )  # type: ignore[arg-type]


def spec(sid: int, chunks: int = 50, **kw: object) -> StreamSpec:
    return StreamSpec(sid, target_chunks=chunks, page_tokens=10, denoise_steps=2, **kw)  # type: ignore[arg-type]


def run(sched: Scheduler, alloc: PageAllocator, steps: int, clock: Clock | None = None):
    outs = []
    for _ in range(steps):
        out = sched.schedule()
        sched.update(complete(out))
        alloc.check_invariants()
        outs.append(out)
        if clock is not None:
            clock.now += 0.05
    return outs


def test_streams_at_different_denoising_steps_share_a_batch():
    sched, alloc, _ = make()
    sched.submit(spec(1))
    (first,) = run(sched, alloc, 1)
    sched.submit(spec(2))
    (second,) = run(sched, alloc, 1)
    assert [(b.stream_id, b.step) for b in first.batch] == [(1, 0)]
    assert sorted((b.stream_id, b.step) for b in second.batch) == [(1, 1), (2, 0)]


def test_batch_is_bounded_by_max_streams_and_max_tokens():
    sched, alloc, _ = make(max_batch_streams=3, max_batch_tokens=1000)
    for sid in range(1, 7):
        sched.submit(spec(sid))
    assert all(len(o.batch) == 3 for o in run(sched, alloc, 10))
    # 3 pages x 10 tokens = 30 tokens a pass: 60 tokens hold two passes, not three
    sched, alloc, _ = make(max_batch_streams=3, max_batch_tokens=60)
    for sid in range(1, 7):
        sched.submit(spec(sid))
    for out in run(sched, alloc, 10):
        assert len(out.batch) == 2 and sum(b.tokens for b in out.batch) <= 60


def test_equal_streams_share_slots_round_robin_within_the_stated_bound():
    """R runnable equal-weight streams, F slots a step: each waits <= ceil(R / F) steps."""
    r, f = 7, 2
    sched, alloc, _ = make(max_batch_streams=f, max_batch_tokens=1000)
    for sid in range(1, r + 1):
        sched.submit(spec(sid))
    last: dict[int, int] = {}
    worst = 0
    for out in run(sched, alloc, 60):
        for b in out.batch:
            if b.stream_id in last:
                worst = max(worst, out.step - last[b.stream_id])
            last[b.stream_id] = out.step
    assert worst <= math.ceil(r / f)
    assert set(last) == set(range(1, r + 1))


def test_higher_priority_gets_slots_in_proportion_to_its_weight():
    sched, alloc, _ = make(max_batch_streams=1, max_batch_tokens=1000)
    sched.submit(spec(1, priority=Priority.LOW))
    sched.submit(spec(2, priority=Priority.HIGH))
    served = Counter(b.stream_id for o in run(sched, alloc, 50) for b in o.batch)
    # weights 1 : 4 (SchedulerConfig.priority_weights)
    assert served[2] == 40 and served[1] == 10


def test_a_stream_joining_late_does_not_take_every_slot():
    """Virtual time starts at the queue's clock: no burst for newcomers or resumed streams."""
    sched, alloc, _ = make(max_batch_streams=1, max_batch_tokens=1000)
    sched.submit(spec(1))
    run(sched, alloc, 20)
    sched.submit(spec(2))
    served = Counter(b.stream_id for o in run(sched, alloc, 10) for b in o.batch)
    assert served[1] == served[2] == 5


def _worst_lag(deadline_share: float) -> int:
    """Most chunks a 32 fps stream falls behind its schedule among 9 busy streams."""
    sched, alloc, clock = make(
        max_batch_streams=2, max_batch_tokens=1000, deadline_share=deadline_share
    )
    for sid in range(1, 10):
        sched.submit(spec(sid))
    run(sched, alloc, 5, clock)
    # 3 frames x 4 video frames at 32 fps: a chunk is due every 0.375 s = 7.5 steps, and a
    # chunk is 3 passes; fair share alone gives it 2 slots / 10 streams = 0.2 passes a step.
    sched.submit(spec(99, target_fps=32.0))
    start, lag = clock.now, 0
    for _ in range(80):
        run(sched, alloc, 1, clock)
        due = int((clock.now - start) / 0.375)
        lag = max(lag, due - sched.get(99).chunk)
    return lag


def test_real_time_stream_keeps_its_frame_rate_by_deadline_slots():
    assert _worst_lag(0.5) <= 1  # at most the chunk in flight
    assert _worst_lag(0.0) >= 3  # the same load without deadline slots falls behind


def test_real_time_stream_ahead_of_schedule_waits_its_fair_turn():
    sched, alloc, clock = make(max_batch_streams=1, max_batch_tokens=1000, deadline_horizon_s=0.1)
    sched.submit(spec(1))
    sched.submit(spec(9, target_fps=1.0))  # a chunk due every 12 s: far beyond the horizon
    served = Counter(b.stream_id for o in run(sched, alloc, 10, clock) for b in o.batch)
    assert served[9] == served[1] == 5


def test_admission_prefers_higher_priority_then_arrival():
    sched, alloc, _ = make(max_batch_streams=1, max_batch_tokens=1000)
    sched.submit(spec(1, priority=Priority.LOW))
    sched.submit(spec(2, priority=Priority.HIGH))
    sched.submit(spec(3, priority=Priority.HIGH))
    out = sched.schedule()
    assert out.admitted == (2, 3, 1)
    assert out.batch[0].stream_id == 2
