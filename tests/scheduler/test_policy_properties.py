"""Property tests of the memory policy (issue 13): lossless rungs before lossy ones, reserved
commits always fit, and admission takes exactly what the capacity view says fits.

Random workloads under the eager policy (the default), with the pool's audit and the
scheduler's own (scheduler/audit.py) after every step.
"""

from __future__ import annotations

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from scheduler import audit
from scheduler.config import SchedulerConfig
from scheduler.core import Scheduler
from scheduler.layout import PoolLayout
from scheduler.output import PassKind, StepResult
from scheduler.pages import PageAllocator
from scheduler.sim import Arrival, Simulator, Workload, toy_layout
from scheduler.stream import StreamSpec

SETTINGS = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def layout(draw) -> PoolLayout:
    """toy_layout's item sizes; blocks up to 15% larger than a BF16 page (slab slack, as the
    engine's blocks, rounded up to whole INT2 pages, have)."""
    return PoolLayout(
        block_bytes=draw(st.sampled_from([1000, 1096, 1150])),
        gpu_blocks=draw(st.integers(12, 80)),
        page_bytes={"bf16": 1000, "qvg-int4": 262, "qvg-int2": 137},
        codebook_bytes={"qvg-int4": 164, "qvg-int2": 164},
    )


@st.composite
def workloads(draw, min_denoise: int = 0):
    arrivals = []
    for i in range(draw(st.integers(1, 10))):
        spec = StreamSpec(
            i + 1,
            target_chunks=draw(st.integers(1, 10)),
            page_tokens=10,
            denoise_steps=draw(st.integers(min_denoise, 3)),
        )
        arrivals.append(Arrival(draw(st.integers(0, 20)), spec))
    config = SchedulerConfig(
        max_batch_streams=draw(st.integers(1, 4)),
        max_batch_tokens=120,
        max_waiting=64,
        sink_pages=draw(st.integers(0, 3)),
        window_pages=draw(st.integers(0, 3)),
        eager_span_pages=draw(st.integers(1, 8)),
        max_blocked_steps=500,
        denoise_unreserved=draw(st.booleans()),
    )
    return config, layout(draw), Workload(tuple(arrivals))


def audited(sim: Simulator, then=None):
    def observe(out) -> None:
        sim.alloc.check_invariants()
        audit.check(sim.scheduler)
        if then is not None:
            then(out)

    return observe


@SETTINGS
@given(workloads())
def test_no_lossy_rung_while_lossless_ones_can_make_room(setup):
    """Whenever each stream's projection fits the arena (admission keeps their sum there),
    encodes, waiting for them, and waiting for commits already under way always make room:
    so a drop or a preempt would be a lossy rung taken while a lossless one could have."""
    config, lay, workload = setup
    sim = Simulator(config, lay, workload)
    fp = sim.scheduler.footprints
    assume(all(fp.bytes_of(a.spec) <= fp.limit for a in workload.arrivals))
    result = sim.run(5000, observe=audited(sim))
    lost = {k: result.counters.get(k, 0) for k in ("drop", "preempt")}
    assert lost == {"drop": 0, "preempt": 0}, (lost, result.counters)
    assert {reason for _, reason in result.ended.values()} == {"completed"}, result.ended


@SETTINGS
@given(workloads(min_denoise=1), st.integers(6, 30))
def test_a_started_chunk_commits_into_the_pages_reserved_for_it(setup, pool):
    """Tight pools too (losses allowed): a chunk's commit pages are reserved at one of its
    denoising passes (its first one when `denoise_unreserved` is off; with it on, a pass that
    finds the pool full runs anyway and the next one tries again), and once reserved, its
    commit pass writes exactly those pages (never a new allocation that could fail, nor a drop
    for it), unless the stream was preempted meanwhile."""
    config, _, workload = setup
    sim = Simulator(config, toy_layout(pool), workload)
    reserved: dict[tuple[int, int], tuple[int, ...]] = {}
    commits = 0

    def check(out) -> None:
        nonlocal commits
        for sid in out.preempted:
            reserved.update({k: () for k in reserved if k[0] == sid})
        for item in out.batch:
            s = sim.scheduler.streams.get(item.stream_id)
            key = (item.stream_id, item.chunk)
            if item.kind == PassKind.DENOISE and s is not None:
                if item.step == 0 and not config.denoise_unreserved:
                    assert len(s.reserved) == s.spec.pages_per_chunk
                if s.reserved:
                    assert len(s.reserved) == s.spec.pages_per_chunk
                    assert reserved.setdefault(key, s.reserved) == s.reserved  # never swapped
            elif item.kind == PassKind.COMMIT:
                assert len(item.new_pages) == 3  # pages_per_chunk
                if reserved.get(key):
                    assert item.new_pages == reserved[key]
                    commits += 1

    sim.run(5000, observe=audited(sim, check))
    assert not sim.scheduler.streams
    assert commits or not sim.scheduler.ended  # the property was exercised


def idle(sched: Scheduler, steps: int) -> None:
    """Steps in which the runner finishes every plan but no pass: admissions happen, nothing
    commits (reservations stay), so the projections alone decide."""
    for _ in range(steps):
        out = sched.schedule()
        sched.update(StepResult(out.step, (), (), tuple(o.plan.id for o in out.orders)))
        audit.check(sched)


chunks = st.one_of(st.none(), st.integers(2, 12))


@SETTINGS
@given(st.integers(20, 200), st.lists(chunks, max_size=6), chunks, st.integers(0, 3))
def test_admission_takes_exactly_what_the_capacity_view_says(pool, before, probe, sink):
    config = SchedulerConfig(
        max_batch_tokens=120, max_waiting=64, sink_pages=sink, window_pages=3, high_watermark=1.0
    )
    sched = Scheduler(config, PageAllocator(toy_layout(pool)))
    for i, n in enumerate(before):
        sched.submit(StreamSpec(i + 1, target_chunks=n, page_tokens=10))
    idle(sched, 3)
    assume(sched.n_waiting == 0)  # a stream still queued would go first
    spec = StreamSpec(100, target_chunks=probe, page_tokens=10)
    fit = sched.streams_that_fit(spec)  # what Engine.capacity (GET /v1/capacity) reports
    had = set(sched.admitted)
    for k in range(fit + 2):
        sched.submit(StreamSpec(100 + k, target_chunks=probe, page_tokens=10))
    idle(sched, fit // 16 + 3)
    assert len(set(sched.admitted) - had) == fit
    assert sched.n_waiting == 2
