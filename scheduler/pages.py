"""Page accounting of the paged KV pool: logical page ids, ref counts, spans, plans.

One class, `PageAllocator`: every public operation and the two-phase plans. It owns a
`PageRecords` (page_records.py: the records and their primitive updates) and leaves stats and
the invariant recount to `page_audit`.

The tensor side owns the bytes; this module owns which bytes mean what. A page is
`page_tokens` tokens of one stream (all layers, K and V) addressed by a logical id that never
changes: encoding or offloading a page changes its `PageLoc`, not its id, so page tables
(lists of ids per stream) survive compression and offload untouched.

    stream 7 table:  [ 3 ][ 4 ][ 5 ][ 9 ]         logical ids (never reused)
                       |    |    |    |
    pages:           bf16 int2 int2 bf16           -> PageLoc(tier, fmt, block, slot, ...)
                            \\____/
    span 2 (int2):   pages {4, 5} + one codebook   -> PageLoc of the codebook

Lifecycle rules (the invariants `check_invariants` recounts):
- A page is held by a set of streams (its ref count); `allocate` gives it one holder,
  `share` adds one, `release` drops one, and the last drop frees its slot.
- A span's codebook lives while any page of the span does (span ref count = live pages).
- Codebook tier: if any page of a span is on the GPU, so is its codebook (decode reads both
  there). A move to the GPU brings the codebook along when it is on the CPU; a move to the
  CPU takes it along only when no page of the span is left on the GPU.
- Encode / move are two-phase: `begin_*` reserves destination slots and returns a `Plan`;
  `commit` frees the sources, `abort` the destinations. In between, the plan's pages and
  their spans are locked: other plans on them and freeing them raise PageError.
- Page ids are never reused, so a stale id cannot alias a newer page (the ABA problem):
  any id below the next id that is not live was freed, which is how use after free and
  double free are told apart from a foreign page in O(1).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from . import page_audit
from .layout import (
    InvariantError,
    OutOfPages,
    PageError,
    PageLoc,
    Plan,
    PoolLayout,
    PoolStats,
    Relocation,
    SpanRelocation,
    check_tier,
    codebook_kind,
)
from .page_records import NULL_PAGE, PageRecord, PageRecords
from .vocab import TIERS, PlanKind, Tier

__all__ = [
    "NULL_PAGE",
    "InvariantError",
    "OutOfPages",
    "PageAllocator",
    "PageError",
    "PageLoc",
    "Plan",
    "PoolLayout",
    "PoolStats",
    "Relocation",
    "SpanRelocation",
    "codebook_kind",
]


class PageAllocator:
    """Ids, ref counts, spans, slab slots and two-phase plans of one pool; never a tensor.

    `debug` (default on) adds the O(table) `check_table`; the O(1) checks (double free, use
    after free, foreign page, locked page) always run.
    """

    NULL_PAGE = NULL_PAGE

    def __init__(self, layout: PoolLayout, *, debug: bool = True) -> None:
        self.layout = layout
        self.debug = debug
        self._rec = PageRecords(layout)
        self._plans: dict[int, Plan] = {}
        self._plan_spans: dict[int, tuple[int, ...]] = {}  # plan id -> spans it locks
        self._locked_pages: dict[int, int] = {}  # page -> id of the plan holding it
        self._locked_spans: dict[int, int] = {}  # span -> id of the plan holding it
        self._pending_bytes: dict[str, int] = dict.fromkeys(TIERS, 0)
        self._next_plan = 1

    # -- allocate / share / release ------------------------------------------------------------

    def allocate(
        self, stream: int, fmt: str, n: int, tier: str = Tier.GPU
    ) -> tuple[int, ...] | OutOfPages:
        """`n` new pages of `fmt` on `tier`, held by `stream`; all or nothing."""
        self._check_fmt(fmt)
        if n < 0:
            raise ValueError(f"n = {n}; ask for n >= 0 pages")
        tier = check_tier(tier)
        short = self._rec.slabs[tier].shortfall({fmt: n})
        if short is not None:
            return short
        rec = self._rec
        return tuple(rec.add_page(stream, rec.take(tier, fmt, fmt)) for _ in range(n))

    def share(self, page: int, stream: int) -> None:
        """`stream` takes a reference to committed page `page` (ref count + 1)."""
        if stream in self._rec.live(page).holders:
            raise PageError(f"stream {stream} already holds page {page}; share it once")
        self._rec.add_holder(page, stream)

    def release(self, stream: int, pages: Iterable[int]) -> tuple[int, ...]:
        """Drop `stream`'s reference to each page (NULL_PAGE skipped); return the pages freed.

        Validates everything before changing anything, so a PageError leaves no trace.
        """
        todo = [p for p in pages if p != NULL_PAGE]
        if len(set(todo)) != len(todo):
            raise PageError(f"release of stream {stream} names a page twice: {todo}")
        for page in todo:
            rec = self._rec.held_by(stream, page)
            if len(rec.holders) == 1 and page in self._locked_pages:
                raise PageError(f"page {page} is under pending plan {self._locked_pages[page]}")
        return tuple(p for p in todo if self._rec.drop_holder(p, stream))

    def release_stream(self, stream: int) -> tuple[int, ...]:
        """Release every page `stream` holds; return the pages freed."""
        return self.release(stream, self.pages_of(stream))

    # -- queries -------------------------------------------------------------------------------

    def location(self, page: int) -> PageLoc:
        """Committed location of a live page."""
        return self._rec.live(page).loc

    def span_of(self, page: int) -> int | None:
        """Span of a live page; None for pages never encoded into a codebook format."""
        return self._rec.live(page).span

    def codebook(self, span: int) -> PageLoc:
        """Location of a live span's codebook."""
        return self._rec.span(span).codebook

    def span_pages(self, span: int) -> tuple[int, ...]:
        """Live pages of a live span, ascending."""
        return tuple(sorted(self._rec.span(span).pages))

    def refcount(self, page: int) -> int:
        """Streams holding a live page."""
        return len(self._rec.live(page).holders)

    def pages_of(self, stream: int) -> tuple[int, ...]:
        """Pages `stream` holds a reference to, in the order it got them."""
        return tuple(self._rec.held.get(stream, ()))

    def check_table(self, stream: int, table: Sequence[int]) -> None:
        """PageError if `table` names a freed page or one `stream` does not hold (debug only)."""
        if self.debug:
            for page in table:
                if page != NULL_PAGE:
                    self._rec.held_by(stream, page)

    def free_items(self, tier: str, kind: str) -> int:
        """Items of `kind` (a format or `codebook_kind(fmt)`) that still fit on `tier`."""
        slab = self._rec.slabs[check_tier(tier)]
        if kind not in slab.per_block:  # a dict read: items_per_block builds a dict a call
            self.layout.items_per_block(kind)  # ValueError naming the known kinds
        return slab.free_items(kind)

    def free_blocks(self, tier: str) -> int:
        """Untyped blocks of `tier`: usable by any item kind. O(1)."""
        return self._rec.slabs[check_tier(tier)].free_blocks()

    def stats(self) -> PoolStats:
        """Snapshot of the counters: O(kinds), no recount (check_invariants recounts)."""
        return page_audit.stats(self)

    def check_invariants(self) -> None:
        """Recount everything from the records; InvariantError on any disagreement. O(pool)."""
        page_audit.check(self)

    # -- two-phase encode / move ---------------------------------------------------------------

    def begin_encode(
        self, stream: int, pages: Sequence[int], fmt: str, tier: str = Tier.GPU
    ) -> Plan | OutOfPages:
        """Reserve `fmt` slots (+ one codebook) on `tier` to encode `pages` into one new span.

        `pages`: consecutive pages of `stream` in table order (bf16, or a quantized format
        for a re-encode such as int4 -> int2). Their old slots stay valid until `commit`.
        A shared page is re-encoded for every holder: ids, hence all tables, stay the same.
        """
        self._check_fmt(fmt)
        tier = check_tier(tier)
        recs = self._lockable(pages, stream)
        demands = {fmt: len(pages)}
        has_cb = self.layout.has_codebook(fmt)
        if has_cb:
            demands[codebook_kind(fmt)] = 1
        short = self._rec.slabs[tier].shortfall(demands)
        if short is not None:
            return short
        take = self._rec.take
        relocs = tuple(
            Relocation(p, r.loc, take(tier, fmt, fmt)) for p, r in zip(pages, recs, strict=True)
        )
        cb = take(tier, fmt, codebook_kind(fmt)) if has_cb else None
        span = self._rec.new_id("span") if has_cb else None
        plan = Plan(self._plan_id(), PlanKind.ENCODE, relocs, fmt, tier, span, cb, (), stream)
        return self._open(plan, recs)

    def begin_move(self, pages: Sequence[int], tier: str) -> Plan | OutOfPages:
        """Reserve slots on `tier` to offload (to "cpu") or reload (to "gpu") `pages`.

        Span codebooks come along per the codebook tier rule (module docstring) and are
        listed in `Plan.codebook_moves`. A page already on `tier` is a PageError.
        """
        tier = check_tier(tier)
        recs = self._lockable(pages, None)
        for page, rec in zip(pages, recs, strict=True):
            if rec.loc.tier == tier:
                raise PageError(f"page {page} is already on {tier}")
        spans = self._spans_to_move(pages, recs, tier)
        demands = Counter(rec.loc.fmt for rec in recs)
        demands.update(codebook_kind(self._rec.spans[s].fmt) for s in spans)
        short = self._rec.slabs[tier].shortfall(demands)
        if short is not None:
            return short
        take = self._rec.take
        relocs = tuple(
            Relocation(p, r.loc, take(tier, r.loc.fmt, r.loc.fmt))
            for p, r in zip(pages, recs, strict=True)
        )
        moves = tuple(self._codebook_move(s, tier) for s in spans)
        plan = Plan(self._plan_id(), PlanKind.MOVE, relocs, None, tier, None, None, moves)
        return self._open(plan, recs)

    def commit(self, plan: Plan) -> None:
        """The tensor side finished `plan`: pages now live at dst, the sources are freed."""
        self._close(plan)
        rec = self._rec
        for page, _, dst in plan.relocations:
            rec.relocate(page, dst)
            if plan.kind == PlanKind.ENCODE:
                rec.set_span(page, plan.span)
        for span, _, dst in plan.codebook_moves:
            rec.move_codebook(span, dst)
        if plan.span is not None and plan.codebook is not None and plan.fmt is not None:
            pages = {r.page for r in plan.relocations}
            rec.add_span(plan.span, plan.fmt, plan.codebook, pages, plan.stream)

    def abort(self, plan: Plan) -> None:
        """Drop `plan`: its destination slots are freed and nothing else changed."""
        self._close(plan)
        give = self._rec.give
        for _, _, dst in plan.relocations:
            give(dst, dst.fmt)
        for _, _, dst in plan.codebook_moves:
            give(dst, codebook_kind(dst.fmt))
        if plan.codebook is not None:
            give(plan.codebook, codebook_kind(plan.codebook.fmt))

    # -- internals -----------------------------------------------------------------------------

    def _check_fmt(self, fmt: str) -> None:
        if fmt not in self.layout.page_bytes:
            raise ValueError(f"fmt = {fmt!r}; the layout knows {sorted(self.layout.page_bytes)}")

    def _plan_id(self) -> int:
        self._next_plan += 1
        return self._next_plan - 1

    def _lockable(self, pages: Sequence[int], stream: int | None) -> list[PageRecord]:
        if not pages or len(set(pages)) != len(pages):
            raise PageError(f"a plan needs distinct pages, got {list(pages)}")
        rec = self._rec
        recs = [rec.live(p) if stream is None else rec.held_by(stream, p) for p in pages]
        for page, r in zip(pages, recs, strict=True):
            if page in self._locked_pages:
                raise PageError(f"page {page} is under pending plan {self._locked_pages[page]}")
            if r.span in self._locked_spans:
                plan = self._locked_spans[r.span]
                raise PageError(f"span {r.span} of page {page} is under pending plan {plan}")
        return recs

    def _spans_to_move(self, pages: Sequence[int], recs: list[PageRecord], tier: Tier) -> list[int]:
        moving = set(pages)
        out = []
        for span in dict.fromkeys(r.span for r in recs if r.span is not None):
            rec = self._rec.spans[span]
            if rec.codebook.tier == tier:
                continue
            # Reload: decode needs the codebook on the GPU. Offload: only once no GPU page reads it.
            live = self._rec.pages
            left = (p for p in rec.pages if p not in moving and live[p].loc.tier != tier)
            if tier is Tier.GPU or next(left, None) is None:
                out.append(span)
        return out

    def _codebook_move(self, span: int, tier: Tier) -> SpanRelocation:
        src = self._rec.spans[span].codebook
        return SpanRelocation(span, src, self._rec.take(tier, src.fmt, codebook_kind(src.fmt)))

    def _open(self, plan: Plan, recs: list[PageRecord]) -> Plan:
        spans = tuple(dict.fromkeys(r.span for r in recs if r.span is not None))
        self._plans[plan.id] = plan
        self._plan_spans[plan.id] = spans
        self._locked_pages.update(dict.fromkeys((r.page for r in plan.relocations), plan.id))
        self._locked_spans.update(dict.fromkeys(spans, plan.id))
        self._pending_bytes[plan.tier] += page_audit.plan_bytes(plan)
        return plan

    def _close(self, plan: Plan) -> None:
        if self._plans.get(plan.id) != plan:
            raise PageError(f"plan {plan.id} is not pending (committed, aborted, or foreign)")
        del self._plans[plan.id]
        for span in self._plan_spans.pop(plan.id):
            del self._locked_spans[span]
        for reloc in plan.relocations:
            del self._locked_pages[reloc.page]
        self._pending_bytes[plan.tier] -= page_audit.plan_bytes(plan)
