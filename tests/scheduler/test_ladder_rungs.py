"""Each rung of the memory-pressure ladder, triggered and asserted (cheapest loss first)."""

from __future__ import annotations

from scheduler.config import SchedulerConfig
from scheduler.core import Scheduler
from scheduler.pages import PageAllocator
from scheduler.sim import complete, toy_layout
from scheduler.stream import Flag, StreamSpec, StreamState


def pressure(**cfg: object) -> SchedulerConfig:
    """These tests pin round 1's ladder: encodes only under pressure, to the early format."""
    return SchedulerConfig(**{"encode_policy": "pressure", **cfg})  # type: ignore[arg-type]


def spec(sid: int, chunks: int | None = 8) -> StreamSpec:
    return StreamSpec(sid, target_chunks=chunks, page_tokens=10, denoise_steps=1)


def make(gpu: int, cpu: int = 0, **cfg: object) -> tuple[Scheduler, PageAllocator]:
    alloc = PageAllocator(toy_layout(gpu, cpu))
    return Scheduler(pressure(**cfg), alloc, clock=lambda: 0.0), alloc  # type: ignore[arg-type]


def drive(sched: Scheduler, alloc: PageAllocator, steps: int) -> list:
    outs = []
    for _ in range(steps):
        out = sched.schedule()
        sched.update(complete(out))
        alloc.check_invariants()
        outs.append(out)
    return outs


def idle_stream_then_a_growing_one(gpu: int, cpu: int = 0, **cfg: object):
    """Stream 1 commits 4 chunks (12 pages) and pauses; stream 2 then grows without end."""
    sched, alloc = make(gpu, cpu, high_watermark=0.6, low_watermark=0.5, **cfg)
    sched.submit(spec(1, chunks=None))
    drive(sched, alloc, 8)
    sched.pause(1)
    sched.submit(spec(2, chunks=None))
    return sched, alloc


def formats(alloc: PageAllocator, pages) -> list[str]:
    return [f"{alloc.location(p).fmt}@{alloc.location(p).tier}" for p in pages]


def events(sched: Scheduler, sid: int) -> list[str]:
    return [t.event for t in sched.get(sid).history]


def test_rung1_encodes_the_idle_stream_middle_first_keeping_sink_and_window_bf16():
    sched, alloc = idle_stream_then_a_growing_one(30)
    table = sched.get(1).table()
    outs = drive(sched, alloc, 7)
    first = next(o for o in outs if o.orders)
    assert [(o.action, o.stream_id) for o in first.orders] == [("encode", 1)]
    assert first.orders[0].plan.fmt == "qvg-int4"
    assert first.gpu_use <= 0.6  # the ladder brought the projected use under the high mark
    assert formats(alloc, table) == ["bf16@gpu"] * 3 + ["qvg-int4@gpu"] * 6 + ["bf16@gpu"] * 3
    assert len({alloc.span_of(p) for p in table[3:9]}) == 1  # one span, one codebook
    assert "encode" in events(sched, 1) and sched.counters["encode"] >= 1
    assert not any(o.degraded or o.preempted for o in outs)


def test_rung2_reencodes_int4_spans_to_int2_when_encoding_is_not_enough():
    sched, alloc = idle_stream_then_a_growing_one(30)
    table = sched.get(1).table()
    outs = drive(sched, alloc, 12)
    actions = [(o.action, o.stream_id) for out in outs for o in out.orders]
    assert actions.index(("encode", 1)) < actions.index(("reencode", 1))
    assert formats(alloc, table[3:9]) == ["qvg-int2@gpu"] * 6
    assert sched.counters["reencode"] >= 1 and "reencode" in events(sched, 1)


def test_rung3_offloads_cold_pages_and_reloads_them_before_the_stream_runs():
    sched, alloc = idle_stream_then_a_growing_one(30, cpu=20)
    table = sched.get(1).table()
    drive(sched, alloc, 30)
    assert formats(alloc, table[3:9]) == ["qvg-int2@cpu"] * 6
    assert formats(alloc, table[:3] + table[9:]) == ["bf16@gpu"] * 6  # sink + window stay
    sched.pause(2)
    sched.pause(1, False)
    reload_step, run_step = None, None
    for out in drive(sched, alloc, 4):
        if any(o.action == "reload" and o.stream_id == 1 for o in out.orders):
            reload_step = out.step
            assert 1 not in [b.stream_id for b in out.batch]  # waits for its pages
        if run_step is None and 1 in [b.stream_id for b in out.batch]:
            run_step = out.step
    assert reload_step is not None and run_step == reload_step + 1
    assert formats(alloc, table[3:9]) == ["qvg-int2@gpu"] * 6
    assert events(sched, 1).count("offload") == 1 and events(sched, 1).count("reload") == 1


def test_rung4_drops_middle_history_and_the_stream_goes_on_degraded():
    sched, alloc = make(20, rungs=frozenset({"drop", "preempt", "refuse"}))  # BF16-only
    sched.submit(spec(1, chunks=5))
    drive(sched, alloc, 8)  # 4 chunks: 12 pages
    sched.pause(1)
    middle = sched.get(1).table()[3:9]
    sched.submit(spec(2, chunks=3))
    outs = drive(sched, alloc, 12)
    assert [o.degraded for o in outs if o.degraded] == [(1,)]
    assert set(middle) <= {p for o in outs for p in o.freed}
    assert alloc.pages_of(1) == sched.get(1).table() and len(alloc.pages_of(1)) == 6
    assert Flag.DEGRADED in sched.get(1).flags and sched.get(1).dropped_pages == 6
    assert sched.get(2).state == "finished"
    sched.pause(1, False)
    drive(sched, alloc, 4)
    ended = sched.get(1)
    assert (ended.state, ended.degraded, ended.chunks) == ("finished", True, 5)


def preempt_scenario(cpu: int):
    """Stream 1 (6 pages, nothing to drop) idles; stream 2's 4th chunk cannot fit 15 pages."""
    sched, alloc = make(15, cpu)
    sched.submit(spec(1, chunks=3))
    drive(sched, alloc, 4)
    sched.pause(1)
    sched.submit(spec(2, chunks=4))
    outs = drive(sched, alloc, 10)
    return sched, alloc, outs


def test_rung5_preempts_by_dropping_and_the_stream_is_recomputed_later():
    sched, alloc, outs = preempt_scenario(cpu=0)
    assert [o.preempted for o in outs if o.preempted] == [(1,)]
    s = sched.get(1)
    assert s.state is StreamState.PREEMPTED and Flag.RECOMPUTE in s.flags
    assert alloc.pages_of(1) == () and s.gpu_pages == 0
    assert sched.get(2).state == "finished"
    sched.pause(1, False)
    outs = drive(sched, alloc, 6)
    kinds = [(b.kind, len(b.new_pages)) for o in outs for b in o.batch if b.stream_id == 1]
    assert kinds[0] == ("recompute", 6)  # sink + window rebuilt from committed latents
    assert sched.get(1).state == "finished" and not sched.get(1).degraded
    lived = [t.event for t in sched.get(1).history]
    assert [e for e in lived if e in ("preempt", "restore")] == ["preempt", "restore"]


def test_rung5_preempts_by_offloading_when_the_cpu_tier_holds_the_stream():
    sched, alloc, outs = preempt_scenario(cpu=20)
    orders = [(o.action, o.stream_id) for out in outs for o in out.orders]
    assert ("preempt", 1) in orders
    s = sched.get(1)
    assert s.state is StreamState.PREEMPTED and Flag.RECOMPUTE not in s.flags
    assert {alloc.location(p).tier for p in s.table()} == {"cpu"}
    sched.pause(1, False)
    outs = drive(sched, alloc, 6)
    assert ("reload", 1) in [(o.action, o.stream_id) for out in outs for o in out.orders]
    assert sched.get(1).state == "finished"


def test_rung6_refuses_new_streams_while_a_stream_is_preempted():
    sched, _, _ = preempt_scenario(cpu=0)
    assert sched.schedule().refusing
    answer = sched.submit(spec(7))
    assert (answer.accepted, answer.reason) == (False, "kv_pressure")
    assert answer.retry_after_s == sched.config.retry_after_s
    assert sched.counters["refuse"] == 1


def test_ladder_order_is_cheapest_loss_first():
    """Under growing pressure, the first action of each rung comes in rung order."""
    sched, alloc = idle_stream_then_a_growing_one(30, cpu=20)
    outs = drive(sched, alloc, 60)
    first: dict[str, int] = {}
    for out in outs:
        for o in out.orders:
            first.setdefault(o.action, out.step)
        for _ in out.degraded:
            first.setdefault("drop", out.step)
    assert first["encode"] <= first["reencode"] <= first["offload"] < first.get("drop", 10**9)
