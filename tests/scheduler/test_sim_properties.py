"""Random workloads through the simulator, with the pool's invariants after every step.

Stated bounds: every admitted stream ends (finished, cancelled or failed, with a reason) within
MAX_STEPS; without memory pressure a runnable stream waits at most
ceil(R * w_max / w_min / F) steps for a slot (runqueue.py), R runnable streams, F slots.
"""

from __future__ import annotations

import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler import audit
from scheduler.config import RUNGS, Priority, SchedulerConfig, TenantConfig
from scheduler.sim import Arrival, Simulator, Workload, toy_layout
from scheduler.stream import StreamSpec, StreamState

MAX_STEPS = 3000
SETTINGS = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
REASONS = {"queue_full", "kv_pressure", "too_large", "duplicate"}
"""Reasons submit() may give."""


@st.composite
def arrivals(draw, n_max: int = 8, pauses: bool = True) -> tuple[Arrival, ...]:
    out = []
    for i in range(draw(st.integers(1, n_max))):
        chunks = draw(st.integers(1, 8))
        spec = StreamSpec(
            i + 1,
            tenant=draw(st.sampled_from("abc")),
            priority=draw(st.sampled_from(list(Priority))),
            target_chunks=chunks,
            page_tokens=10,
            denoise_steps=draw(st.integers(0, 2)),
            target_fps=draw(st.sampled_from([None, None, 8.0])),
        )
        stops = draw(st.lists(st.tuples(st.integers(1, chunks), st.integers(0, 40)), max_size=2))
        stops = sorted(dict(stops).items()) if pauses else []
        start = draw(st.integers(0, 30))
        cancel = start + draw(st.integers(1, 40)) if pauses and draw(st.booleans()) else None
        out.append(Arrival(start, spec, tuple(stops), cancel))
    return tuple(out)


@st.composite
def setups(draw):
    workload = Workload(
        draw(arrivals()),
        plan_fail_every=draw(st.sampled_from([0, 0, 3, 7])),
        fail_streams=frozenset(draw(st.lists(st.integers(1, 7), max_size=1))),
    )
    tenants = {
        "a": TenantConfig(page_cap=draw(st.sampled_from([None, 9, 15, 30]))),
        "b": TenantConfig(page_floor=draw(st.sampled_from([0, 6, 12])), weight=2.0),
    }
    rungs = draw(st.sampled_from([RUNGS, ("drop", "preempt", "refuse"), ("encode", "preempt")]))
    config = SchedulerConfig(
        max_batch_streams=draw(st.integers(1, 4)),
        max_batch_tokens=120,
        max_waiting=draw(st.integers(1, 8)),
        high_watermark=0.8,
        low_watermark=0.7,
        max_blocked_steps=300,
        rungs=frozenset(rungs),
        tenants=tenants,
    )
    layout = toy_layout(draw(st.integers(12, 40)), draw(st.sampled_from([0, 0, 10, 30])))
    return config, layout, workload


def check_step(sim: Simulator) -> None:
    """The pool's own audit, and the scheduler's accounting against a recount from it."""
    sim.alloc.check_invariants()
    audit.check(sim.scheduler)


@SETTINGS
@given(setups())
def test_random_workloads_keep_every_invariant_and_end_every_stream(setup):
    config, layout, workload = setup
    sim = Simulator(config, layout, workload)
    result = sim.run(MAX_STEPS, observe=lambda out: check_step(sim))
    assert not sim.scheduler.streams, "a stream neither finished nor ended by MAX_STEPS"
    for arrival in workload.arrivals:
        sid = arrival.spec.stream_id
        if sid in result.rejected:
            assert result.rejected[sid] in REASONS
        else:
            state, reason = result.ended[sid]
            assert state in ("finished", "cancelled", "failed") and reason
    stats = sim.alloc.stats()
    assert not stats.pages and not stats.codebooks and stats.pending_plans == 0  # no leak
    assert result.max_gpu_use <= 1.0


@SETTINGS
@given(arrivals(n_max=6, pauses=False), st.integers(1, 3))
def test_no_runnable_stream_waits_longer_than_the_fair_share_bound(arrivals, slots):
    config = SchedulerConfig(max_batch_streams=slots, max_batch_tokens=1000, deadline_share=0.0)
    sim = Simulator(config, toy_layout(400), Workload(arrivals))
    weights = [config.weight(p) for p in Priority]
    bound = math.ceil(len(arrivals) * max(weights) / min(weights) / slots) + 1
    waiting: dict[int, int] = {}
    worst = 0

    def observe(out) -> None:
        nonlocal worst
        served = {b.stream_id for b in out.batch}
        for s in sim.scheduler.admitted.values():
            if s.state is StreamState.RUNNING and s.id not in served:
                waiting[s.id] = waiting.get(s.id, 0) + 1
                worst = max(worst, waiting[s.id])
            else:
                waiting.pop(s.id, None)

    sim.run(MAX_STEPS, observe=observe)
    assert worst <= bound
    assert not sim.scheduler.streams


def test_the_simulator_is_deterministic():
    spec = [StreamSpec(i, tenant="ab"[i % 2], target_chunks=4, page_tokens=10) for i in range(9)]
    workload = Workload(tuple(Arrival(i * 2, s, ((2, 5),)) for i, s in enumerate(spec)))
    config = SchedulerConfig(max_batch_tokens=120, high_watermark=0.6, low_watermark=0.5)
    runs = [Simulator(config, toy_layout(40, 10), workload).run(MAX_STEPS) for _ in range(2)]
    assert runs[0]._replace(step_seconds=[]) == runs[1]._replace(step_seconds=[])
    assert runs[0].counters.get("encode", 0) > 0  # the workload does exercise the ladder
