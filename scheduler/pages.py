"""Page accounting of the paged KV pool: logical page ids, ref counts, spans, plans.

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
from collections.abc import Sequence

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
from .page_refs import NULL_PAGE, PageRefs, _Page, _Span

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


class PageAllocator(PageRefs):
    """`PageRefs` plus two-phase encode / move plans, stats and the invariant audit."""

    # -- two-phase encode / move ---------------------------------------------------------------

    def begin_encode(
        self, stream: int, pages: Sequence[int], fmt: str, tier: str = "gpu"
    ) -> Plan | OutOfPages:
        """Reserve `fmt` slots (+ one codebook) on `tier` to encode `pages` into one new span.

        `pages`: consecutive pages of `stream` in table order (bf16, or a quantized format
        for a re-encode such as int4 -> int2). Their old slots stay valid until `commit`.
        A shared page is re-encoded for every holder: ids, hence all tables, stay the same.
        """
        self._check_fmt(fmt)
        recs = self._lockable(pages, stream)
        demands = {fmt: len(pages)}
        has_cb = self.layout.has_codebook(fmt)
        if has_cb:
            demands[codebook_kind(fmt)] = 1
        short = self._slabs[check_tier(tier)].shortfall(demands)
        if short is not None:
            return short
        relocs = tuple(
            Relocation(p, r.loc, self._take(tier, fmt, fmt))
            for p, r in zip(pages, recs, strict=True)
        )
        cb = self._take(tier, fmt, codebook_kind(fmt)) if has_cb else None
        span = self._new_id("span") if has_cb else None
        plan = Plan(self._new_id("plan"), "encode", relocs, fmt, tier, span, cb, (), stream)
        return self._open(plan, recs)

    def begin_move(self, pages: Sequence[int], tier: str) -> Plan | OutOfPages:
        """Reserve slots on `tier` to offload (to "cpu") or reload (to "gpu") `pages`.

        Span codebooks come along per the codebook tier rule (module docstring) and are
        listed in `Plan.codebook_moves`. A page already on `tier` is a PageError.
        """
        check_tier(tier)
        recs = self._lockable(pages, None)
        for page, rec in zip(pages, recs, strict=True):
            if rec.loc.tier == tier:
                raise PageError(f"page {page} is already on {tier}")
        spans = self._spans_to_move(pages, recs, tier)
        demands = Counter(rec.loc.fmt for rec in recs)
        demands.update(codebook_kind(self._spans[s].fmt) for s in spans)
        short = self._slabs[tier].shortfall(demands)
        if short is not None:
            return short
        relocs = tuple(
            Relocation(p, r.loc, self._take(tier, r.loc.fmt, r.loc.fmt))
            for p, r in zip(pages, recs, strict=True)
        )
        moves = tuple(self._codebook_move(s, tier) for s in spans)
        plan = Plan(self._new_id("plan"), "move", relocs, None, tier, None, None, moves)
        return self._open(plan, recs)

    def commit(self, plan: Plan) -> None:
        """The tensor side finished `plan`: pages now live at dst, the sources are freed."""
        self._close(plan)
        for page, src, dst in plan.relocations:
            rec = self._pages[page]
            self._give(src, src.fmt)
            self._page_count[(src.tier, src.fmt)] -= 1
            self._page_count[(dst.tier, dst.fmt)] += 1
            rec.loc = dst
            if plan.kind == "encode":
                old, rec.span = rec.span, plan.span
                if old is not None:
                    self._leave_span(old, page)
        for span, src, dst in plan.codebook_moves:
            self._give(src, codebook_kind(src.fmt))
            self._cb_count[(src.tier, src.fmt)] -= 1
            self._cb_count[(dst.tier, dst.fmt)] += 1
            self._spans[span].codebook = dst
        if plan.span is not None and plan.codebook is not None and plan.fmt is not None:
            pages = {r.page for r in plan.relocations}
            self._spans[plan.span] = _Span(plan.fmt, plan.codebook, pages, plan.stream)
            self._cb_count[(plan.tier, plan.fmt)] += 1

    def abort(self, plan: Plan) -> None:
        """Drop `plan`: its destination slots are freed and nothing else changed."""
        self._close(plan)
        for _, _, dst in plan.relocations:
            self._give(dst, dst.fmt)
        for _, _, dst in plan.codebook_moves:
            self._give(dst, codebook_kind(dst.fmt))
        if plan.codebook is not None:
            self._give(plan.codebook, codebook_kind(plan.codebook.fmt))

    def pending(self) -> tuple[Plan, ...]:
        """Plans begun and neither committed nor aborted."""
        return tuple(self._plans.values())

    def stats(self) -> PoolStats:
        """Snapshot of the counters: O(kinds), no recount (check_invariants recounts)."""
        return page_audit.stats(self)

    def check_invariants(self) -> None:
        """Recount everything from the records; InvariantError on any disagreement. O(pool)."""
        page_audit.check(self)

    def _lockable(self, pages: Sequence[int], stream: int | None) -> list[_Page]:
        if not pages or len(set(pages)) != len(pages):
            raise PageError(f"a plan needs distinct pages, got {list(pages)}")
        recs = [self._live(p) if stream is None else self._held_by(stream, p) for p in pages]
        for page, rec in zip(pages, recs, strict=True):
            if page in self._locked_pages:
                raise PageError(f"page {page} is under pending plan {self._locked_pages[page]}")
            if rec.span in self._locked_spans:
                plan = self._locked_spans[rec.span]
                raise PageError(f"span {rec.span} of page {page} is under pending plan {plan}")
        return recs

    def _spans_to_move(self, pages: Sequence[int], recs: list[_Page], tier: str) -> list[int]:
        moving = set(pages)
        out = []
        for span in dict.fromkeys(r.span for r in recs if r.span is not None):
            rec = self._spans[span]
            if rec.codebook.tier == tier:
                continue
            # Reload: decode needs the codebook on the GPU. Offload: only once no GPU page reads it.
            left = (p for p in rec.pages if p not in moving and self._pages[p].loc.tier != tier)
            if tier == "gpu" or next(left, None) is None:
                out.append(span)
        return out

    def _codebook_move(self, span: int, tier: str) -> SpanRelocation:
        src = self._spans[span].codebook
        return SpanRelocation(span, src, self._take(tier, src.fmt, codebook_kind(src.fmt)))

    def _open(self, plan: Plan, recs: list[_Page]) -> Plan:
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
