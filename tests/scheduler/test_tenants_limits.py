"""Tenants: page caps, guaranteed floors, fair-share and priority order of ladder victims."""

from __future__ import annotations

from scheduler.config import Priority, SchedulerConfig, TenantConfig
from scheduler.core import Scheduler
from scheduler.pages import PageAllocator
from scheduler.sim import complete, toy_layout
from scheduler.stream import StreamSpec

BF16_ONLY = frozenset({"drop", "preempt", "refuse"})


def pressure(**cfg: object) -> SchedulerConfig:
    """These tests pin round 1's ladder: encodes only under pressure, to the early format."""
    return SchedulerConfig(**{"encode_policy": "pressure", **cfg})  # type: ignore[arg-type]


def spec(sid: int, tenant: str, chunks: int | None = 4, **kw: object) -> StreamSpec:
    return StreamSpec(
        sid, tenant=tenant, target_chunks=chunks, page_tokens=10, denoise_steps=1, **kw
    )  # type: ignore[arg-type]


def make(gpu: int, cpu: int = 0, **cfg: object) -> tuple[Scheduler, PageAllocator]:
    alloc = PageAllocator(toy_layout(gpu, cpu))
    return Scheduler(pressure(**cfg), alloc, clock=lambda: 0.0), alloc  # type: ignore[arg-type]


def drive(sched: Scheduler, alloc: PageAllocator, steps: int, check=None) -> list:
    outs = []
    for _ in range(steps):
        out = sched.schedule()
        sched.update(complete(out))
        alloc.check_invariants()
        if check is not None:
            check()
        outs.append(out)
    return outs


def gpu_pages_of(sched: Scheduler, alloc: PageAllocator, tenant: str) -> int:
    """Recount from the allocator: pages of `tenant`'s streams that live on the GPU."""
    ids = [s.id for s in sched.admitted.values() if s.spec.tenant == tenant]
    return sum(1 for sid in ids for p in alloc.pages_of(sid) if alloc.location(p).tier == "gpu")


def idle(sched: Scheduler, alloc: PageAllocator, sid: int, tenant: str, chunks: int, **kw):
    """Stream `sid` commits `chunks` chunks, then pauses (it keeps its pages)."""
    sched.submit(spec(sid, tenant, chunks=None, **kw))
    while sid not in sched.streams or sched.streams[sid].chunk < chunks:
        drive(sched, alloc, 1)
    sched.pause(sid)


def test_a_tenant_never_holds_more_gpu_pages_than_its_cap():
    sched, alloc = make(64, tenants={"a": TenantConfig(page_cap=12)})
    idle(sched, alloc, 1, "a", chunks=2)  # 6 pages
    sched.submit(spec(2, "a", chunks=6))  # 18 pages if nothing is given up

    def check() -> None:
        assert gpu_pages_of(sched, alloc, "a") <= 12
        assert sched.book.gpu_pages["a"] == gpu_pages_of(sched, alloc, "a")

    drive(sched, alloc, 30, check)
    assert sched.get(2).state == "finished"
    # its own idle stream gave way first (the pool itself had room: only the cap pressed)
    assert [t.event for t in sched.get(1).history if t.event == "preempt"] == ["preempt"]


def test_a_tenant_is_never_pushed_below_its_floor():
    def scenario(floor: int):
        sched, alloc = make(24, rungs=BF16_ONLY, tenants={"b": TenantConfig(page_floor=floor)})
        idle(sched, alloc, 1, "b", chunks=4)  # 12 pages
        sched.submit(spec(2, "a", chunks=6))
        floor_held = []
        drive(sched, alloc, 40, lambda: floor_held.append(gpu_pages_of(sched, alloc, "b")))
        return sched, floor_held

    sched, held = scenario(floor=12)
    assert min(held) == 12
    assert not {"drop", "preempt"} & {t.event for t in sched.get(1).history}
    assert sched.get(2).state == "finished" and sched.get(2).degraded  # gave up its own
    sched, held = scenario(floor=0)  # control: without the floor, b is the victim
    assert min(held) < 12 and "drop" in {t.event for t in sched.get(1).history}


def test_victims_come_from_the_tenant_above_its_fair_share_first():
    sched, alloc = make(44, rungs=BF16_ONLY)
    # b: 9 pages (3 to drop: the least loss); a: 12 + 12 pages, above its share of 3 tenants
    idle(sched, alloc, 1, "b", chunks=3)
    idle(sched, alloc, 2, "a", chunks=4)
    idle(sched, alloc, 3, "a", chunks=4)
    sched.submit(spec(4, "c", chunks=6))
    outs = drive(sched, alloc, 30)
    victims = [sid for o in outs for sid in o.degraded + o.preempted if sid != 4]
    assert victims and sched.streams[victims[0]].spec.tenant == "a"


def test_lower_priority_loses_first_and_a_higher_class_is_never_hit_by_a_lower_one():
    sched, alloc = make(34, rungs=BF16_ONLY)
    idle(sched, alloc, 1, "a", chunks=4, priority=Priority.HIGH)
    idle(sched, alloc, 2, "a", chunks=4, priority=Priority.LOW)
    sched.submit(spec(3, "a", chunks=8, priority=Priority.NORMAL))
    drive(sched, alloc, 40)
    touched = {t.event for t in sched.get(1).history}
    assert not {"drop", "preempt"} & touched
    assert {"drop"} <= {t.event for t in sched.get(2).history}


def test_fair_share_is_weighted():
    sched, _ = make(64, tenants={"a": TenantConfig(weight=3.0)})
    sched.submit(spec(1, "a"))
    sched.submit(spec(2, "b"))
    sched.schedule()  # both admitted
    sched.book.gpu_pages.update({"a": 30, "b": 12})
    # shares of 42 pages at weights 3:1 are 31.5 and 10.5: only b is above its share
    assert sched.book.over_share() == {"b"}


def test_a_lease_caps_a_tenant_below_its_page_cap_and_no_lease_means_no_pages():
    sched, alloc = make(64, tenants={"a": TenantConfig(page_cap=30)})
    sched.set_page_leases({})  # cluster mode: a capped tenant without a lease gets nothing
    sched.submit(spec(1, "a", chunks=6))  # 18 pages at full length
    sched.submit(spec(2, "b", chunks=2))  # uncapped: leases do not touch it
    drive(sched, alloc, 10)
    assert sched.get(1).state == "waiting" and gpu_pages_of(sched, alloc, "a") == 0
    assert sched.get(2).state == "finished"
    assert sched.tenant_pages()["a"] == (0, 18, 30)  # wants its full length
    sched.submit(spec(3, "a", chunks=2))  # 6 more: 24 do not fit a lease of 20
    sched.set_page_leases({"a": 20})
    started = []

    def check() -> None:
        assert gpu_pages_of(sched, alloc, "a") <= 20
        started.extend(s for s in (1, 3) if s in sched.admitted and s not in started)

    drive(sched, alloc, 60, check)
    assert sched.get(1).state == "finished" and sched.get(3).state == "finished"
    assert started == [1, 3]  # 3 started only once 1's pages were no longer needed
    assert [t.event for t in sched.get(1).history if t.event in ("drop", "preempt")] == []
    sched.set_page_leases(None)  # back to the configured cap alone
    assert sched.book.cap("a") == 30


def test_tenant_pages_reports_held_and_the_full_pages_of_its_streams():
    sched, alloc = make(64, tenants={"a": TenantConfig(page_cap=20)})
    idle(sched, alloc, 1, "a", chunks=2)  # 6 pages held; unbounded: reserves 9
    sched.submit(spec(2, "a", chunks=3))  # 9 more when it starts
    sched.submit(spec(3, "b", chunks=4))
    got = sched.tenant_pages()
    assert set(got) == {"a"}  # only capped tenants
    assert got["a"] == (6, 18, 20)
