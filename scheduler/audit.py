"""The scheduler's own accounting, recounted from its allocator: the audit tests run each step.

`page_audit.check` recounts the allocator from its records; this recounts what the scheduler
believes about the pages it holds (page tables, commit reservations, tenant quotas, pending
plans, admission projections) against the allocator. O(pages), so nothing on the serving path
calls it: the scheduler and engine tests do, after every step (Engine.check_invariants).
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from .layout import InvariantError
from .vocab import Format, StreamState, Tier

if TYPE_CHECKING:
    from .core import Scheduler
    from .stream import Stream


def _fail(what: str) -> None:
    raise InvariantError(what)


def check_stream(sched: Scheduler, s: Stream) -> int:
    """One admitted stream against the allocator; returns its GPU pages (recounted)."""
    alloc = sched.alloc
    table, reserved = set(s.table()), set(s.reserved)
    if table & reserved:
        _fail(f"stream {s.id}: reserved pages {sorted(table & reserved)} are in its table")
    if table | reserved != set(alloc.pages_of(s.id)):
        _fail(f"stream {s.id}: table + reservation != the pages the allocator says it holds")
    for p in s.reserved:
        loc = alloc.location(p)
        if (loc.tier, loc.fmt) != (Tier.GPU, Format.BF16):
            _fail(f"stream {s.id}: reserved page {p} is {loc.fmt}@{loc.tier}, not bf16@gpu")
    for seg in s.segments:
        for p in seg.pages:
            loc = alloc.location(p)
            if (loc.tier, loc.fmt) != (seg.tier, seg.fmt):
                _fail(f"stream {s.id}: page {p} is {loc.fmt}@{loc.tier}, its segment says "
                      f"{seg.fmt}@{seg.tier}")  # fmt: skip
        if seg.plan is not None and seg.plan not in s.plans:
            _fail(f"stream {s.id}: a segment is locked by plan {seg.plan}, not one of its own")
    gpu = sum(len(x.pages) for x in s.segments if x.tier == Tier.GPU) + len(s.reserved)
    if s.gpu_pages != gpu:
        _fail(f"stream {s.id}: gpu_pages = {s.gpu_pages}, recount {gpu}")
    return gpu


def check(sched: Scheduler) -> None:
    """Raise InvariantError unless the scheduler's accounting agrees with a recount."""
    per_tenant: Counter[str] = Counter()
    for s in sched.admitted.values():
        per_tenant[s.spec.tenant] += check_stream(sched, s)
    for s in sched.streams.values():
        if s.state is StreamState.WAITING and sched.alloc.pages_of(s.id):
            _fail(f"stream {s.id} waits for admission but holds pages")
    for tenant in set(per_tenant) | set(sched.book.gpu_pages):
        n = per_tenant[tenant]
        if sched.book.gpu_pages[tenant] != n:
            _fail(f"tenant {tenant!r}: book says {sched.book.gpu_pages[tenant]} GPU pages, "
                  f"recount {n}")  # fmt: skip
        cap = sched.config.tenant(tenant).page_cap
        if cap is not None and n > cap:
            _fail(f"tenant {tenant!r} holds {n} GPU pages, above its cap {cap}")
    _check_plans(sched)
    _check_projections(sched)


def _check_plans(sched: Scheduler) -> None:
    ops = sched.ops
    if ops.pending_frees != sum(p.frees for p in ops.pending.values()):
        _fail(f"pending_frees = {ops.pending_frees} != the sum over pending plans")
    for plan_id, pend in ops.pending.items():
        if plan_id not in pend.stream.plans or pend.stream.id not in sched.streams:
            _fail(f"plan {plan_id} belongs to stream {pend.stream.id}, which does not hold it")
    for sid, s in ops.preempted.items():
        if sched.admitted.get(sid) is not s or s.state is not StreamState.PREEMPTED:
            _fail(f"stream {sid} is listed as preempted but is {s.state}")


def _check_projections(sched: Scheduler) -> None:
    fp = sched.footprints
    if set(fp.of) != set(sched.admitted):
        _fail("admission projections are not exactly the admitted streams'")
    if fp.total != sum(fp.of.values()):
        _fail(f"projected total {fp.total} != the sum of the streams' projections")
