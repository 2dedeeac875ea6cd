"""Stats and the invariant audit of a `PageAllocator`, recounted from its records.

Kept apart from the allocator so the hot path stays short; it reads the allocator's private
records on purpose (same package, read-only). `check` is O(pages + blocks), so nothing on the
serving path calls it: the engine builds its allocator with debug=False and never audits it.
The scheduler and allocator tests call it after every operation, the KV-pool and engine tests
at the end of a run, and `tools/gpu_engine_check.py` after its GPU run.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from .layout import InvariantError, PageLoc, Plan, PoolStats, codebook_kind, kind_format
from .vocab import TIERS, Tier

if TYPE_CHECKING:
    from .pages import PageAllocator

Occupied = dict[str, dict[int, tuple[str, set[int]]]]
"""tier -> block -> (kind, slots held by a live record)."""


def plan_bytes(plan: Plan) -> int:
    """Bytes a pending plan reserves on its destination tier."""
    locs = [r.dst for r in plan.relocations] + [m.dst for m in plan.codebook_moves]
    return sum(loc.nbytes for loc in locs) + (plan.codebook.nbytes if plan.codebook else 0)


def stats(alloc: PageAllocator) -> PoolStats:
    """Snapshot of the allocator's counters (see PoolStats)."""
    records = alloc._rec
    used: Counter[tuple[str, str]] = Counter()
    free_slots, blocks_by_kind = {}, {}
    for tier, slab in records.slabs.items():
        for kind, n in slab.used_items.items():
            used[(tier, kind_format(kind))] += n * slab.item_bytes[kind]
            free_slots[(tier, kind)] = slab.free_slots(kind)
        blocks_by_kind.update({(tier, k): n for k, n in slab.typed_blocks.items()})
    total = {t: s.n_blocks * s.block_bytes for t, s in records.slabs.items()}
    used_tier = {t: sum(n for (tt, _), n in used.items() if tt == t) for t in TIERS}
    return PoolStats(
        pages={k: n for k, n in records.page_count.items() if n},
        codebooks={k: n for k, n in records.cb_count.items() if n},
        used_bytes={k: n for k, n in used.items() if n},
        pending_bytes=dict(alloc._pending_bytes),
        total_bytes=total,
        free_bytes={t: total[t] - used_tier[t] for t in TIERS},
        free_blocks={t: s.free_blocks() for t, s in records.slabs.items()},
        blocks_by_kind=blocks_by_kind,
        free_slots=free_slots,
        items_per_block=dict(records.slabs[Tier.GPU].per_block),
        spans=len(records.spans),
        pending_plans=len(alloc._plans),
    )


def check(alloc: PageAllocator) -> None:
    """Raise InvariantError unless every record, counter and slab agrees with a recount."""
    records = alloc._rec
    occupied: Occupied = {t: {} for t in TIERS}
    _check_pages(alloc, occupied)
    _check_spans(alloc, occupied)
    _check_plans(alloc, occupied)
    for tier, slab in records.slabs.items():
        slab.check(occupied[tier])  # free + used == total, blocks and slots
    _check_stats(alloc)


def _occupy(occupied: Occupied, loc: PageLoc, kind: str, what: str) -> None:
    blocks = occupied[loc.tier]
    block_kind, slots = blocks.setdefault(loc.block, (kind, set()))
    if block_kind != kind or loc.slot in slots:
        raise InvariantError(f"{what} at {loc} collides with another item ({block_kind})")
    slots.add(loc.slot)


def _check_pages(alloc: PageAllocator, occupied: Occupied) -> None:
    records = alloc._rec
    holders: Counter[int] = Counter()
    for page, rec in records.pages.items():
        if not rec.holders:
            raise InvariantError(f"page {page} is live with ref count 0 (leaked)")
        if not 0 < page < records.next["page"]:
            raise InvariantError(f"page {page} has an id never handed out (null page?)")
        for stream in rec.holders:
            if page not in records.held.get(stream, {}):
                raise InvariantError(f"page {page} lists holder {stream}, whose table lacks it")
        holders.update(rec.holders)
        _occupy(occupied, rec.loc, rec.loc.fmt, f"page {page}")
    for stream, pages in records.held.items():
        # A stream reaches a page only through allocate or share: both record it as a holder.
        if not pages or len(pages) != holders[stream]:
            raise InvariantError(f"stream {stream} holds pages that do not list it as holder")


def _check_spans(alloc: PageAllocator, occupied: Occupied) -> None:
    records = alloc._rec
    members: Counter[int] = Counter(r.span for r in records.pages.values() if r.span is not None)
    for span, rec in records.spans.items():
        if not rec.pages or members[span] != len(rec.pages):
            raise InvariantError(f"span {span} is empty or disagrees with its pages' records")
        for page in rec.pages:
            loc = records.pages[page].loc
            if records.pages[page].span != span or loc.fmt != rec.fmt:
                raise InvariantError(f"page {page} is listed in span {span} but is not of it")
            if loc.tier == Tier.GPU and rec.codebook.tier != Tier.GPU:
                raise InvariantError(f"span {span} has page {page} on gpu, codebook on cpu")
        _occupy(occupied, rec.codebook, codebook_kind(rec.fmt), f"codebook of span {span}")
    if set(members) - set(records.spans):
        raise InvariantError("a live page points at a dead span (its codebook was freed)")


def _check_plans(alloc: PageAllocator, occupied: Occupied) -> None:
    records = alloc._rec
    reserved: dict[str, int] = dict.fromkeys(TIERS, 0)
    locked_pages, locked_spans = {}, {}
    for pid, plan in alloc._plans.items():
        for page, src, dst in plan.relocations:
            if page not in records.pages or records.pages[page].loc != src:
                raise InvariantError(f"plan {pid}: page {page} is dead or no longer at src")
            locked_pages[page] = pid
            _occupy(occupied, dst, dst.fmt, f"plan {pid} dst of page {page}")
        for span, src, dst in plan.codebook_moves:
            if records.spans[span].codebook != src:
                raise InvariantError(f"plan {pid}: codebook of span {span} is no longer at src")
            _occupy(occupied, dst, codebook_kind(dst.fmt), f"plan {pid} codebook dst")
        if plan.codebook is not None:
            _occupy(occupied, plan.codebook, codebook_kind(plan.codebook.fmt), f"plan {pid}")
        locked_spans.update(dict.fromkeys(alloc._plan_spans[pid], pid))
        reserved[plan.tier] += plan_bytes(plan)
    if locked_pages != alloc._locked_pages or locked_spans != alloc._locked_spans:
        raise InvariantError("page/span locks disagree with the pending plans")
    if reserved != alloc._pending_bytes or set(alloc._plan_spans) != set(alloc._plans):
        raise InvariantError("pending bytes or plan span records disagree with the plans")


def _check_stats(alloc: PageAllocator) -> None:
    records = alloc._rec
    pages = Counter((r.loc.tier, r.loc.fmt) for r in records.pages.values())
    books = Counter((s.codebook.tier, s.fmt) for s in records.spans.values())
    if pages != +records.page_count or books != +records.cb_count:
        raise InvariantError("page or codebook counters disagree with a recount")
    if any(n < 0 for n in (*records.page_count.values(), *records.cb_count.values())):
        raise InvariantError("a counter went negative")
