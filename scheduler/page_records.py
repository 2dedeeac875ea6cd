"""The records of one pool: what every live page id and span id means, and where it lives.

`PageRecords` is the data the `PageAllocator` (pages.py) owns: pages (location, holders,
span), spans (format, codebook, live pages), each stream's pages, the tier slabs and the
counters by (tier, format). Its methods are primitive updates that keep those structures
consistent with each other; the allocator validates requests and sequences the updates,
`page_audit` recounts everything from here. Never touches a tensor.

Page ids are never reused, so a stale id cannot alias a newer page (the ABA problem): an id
below the next id that is not live was freed, which tells use after free and double free
apart from a foreign page in O(1) (`live`).
"""

from __future__ import annotations

from collections import Counter

from .layout import PageError, PageLoc, PoolLayout, codebook_kind
from .slab import TierSlab
from .vocab import TIERS

NULL_PAGE = 0
"""Reserved id for padding in page tables: never allocated, never freed, no storage."""


class PageRecord:
    """One live page."""

    __slots__ = ("loc", "holders", "span")

    def __init__(self, loc: PageLoc, holder: int) -> None:
        self.loc = loc  # committed location; a pending plan's dst is not it until commit
        self.holders = {holder}  # streams holding a ref; ref count = len(holders) >= 1
        self.span: int | None = None


class SpanRecord:
    """One live span: pages encoded together, sharing one codebook."""

    __slots__ = ("fmt", "codebook", "pages", "stream")

    def __init__(self, fmt: str, codebook: PageLoc, pages: set[int], stream: int | None) -> None:
        self.fmt = fmt
        self.codebook = codebook
        self.pages = pages  # live pages; the span (and its codebook) dies with the last one
        self.stream = stream  # the stream that encoded it (pages may since be shared)


class PageRecords:
    """Pages, spans, stream holdings, slabs and counters of one pool (see module docstring)."""

    def __init__(self, layout: PoolLayout) -> None:
        items = layout.item_bytes
        self.slabs: dict[str, TierSlab] = {
            t: TierSlab(t, layout.blocks(t), items, layout.block_bytes) for t in TIERS
        }
        self.pages: dict[int, PageRecord] = {}
        self.spans: dict[int, SpanRecord] = {}
        self.held: dict[int, dict[int, None]] = {}  # stream -> its pages, in allocation order
        self.page_count: Counter[tuple[str, str]] = Counter()  # committed, by (tier, fmt)
        self.cb_count: Counter[tuple[str, str]] = Counter()  # live codebooks, by (tier, fmt)
        self.next = {"page": NULL_PAGE + 1, "span": 1}

    # -- lookups that raise PageError ----------------------------------------------------------

    def live(self, page: int) -> PageRecord:
        """The record of a live page; PageError naming why `page` is not one."""
        rec = self.pages.get(page)
        if rec is not None:
            return rec
        if page == NULL_PAGE:
            raise PageError("page 0 is the null page: it has no storage and no owner")
        if NULL_PAGE < page < self.next["page"]:
            raise PageError(f"page {page} was freed (use after free or double free)")
        raise PageError(f"page {page} was never allocated")

    def held_by(self, stream: int, page: int) -> PageRecord:
        """The record of a live page `stream` holds; PageError otherwise."""
        rec = self.live(page)
        if stream not in rec.holders:
            raise PageError(
                f"stream {stream} does not hold page {page} (holders {sorted(rec.holders)}): "
                "a foreign page, or a reference already released"
            )
        return rec

    def span(self, span: int) -> SpanRecord:
        """The record of a live span; PageError otherwise."""
        rec = self.spans.get(span)
        if rec is None:
            raise PageError(f"span {span} is not live (all its pages were freed or re-encoded)")
        return rec

    # -- slots ---------------------------------------------------------------------------------

    def new_id(self, what: str) -> int:
        self.next[what] += 1
        return self.next[what] - 1

    def take(self, tier: str, fmt: str, kind: str) -> PageLoc:
        """A free slot of `kind` on `tier` (the caller checked the slab's shortfall first)."""
        slab = self.slabs[tier]
        block, slot = slab.take(kind)
        return PageLoc(
            tier, fmt, block, slot, slab.offset(kind, block, slot), slab.item_bytes[kind]
        )

    def give(self, loc: PageLoc, kind: str) -> None:
        self.slabs[loc.tier].give(kind, loc.block, loc.slot)

    # -- pages and holders ---------------------------------------------------------------------

    def add_page(self, stream: int, loc: PageLoc) -> int:
        """A new page at `loc` (a slot already taken), held by `stream`; its id."""
        page = self.new_id("page")
        self.pages[page] = PageRecord(loc, stream)
        self.held.setdefault(stream, {})[page] = None
        self.page_count[(loc.tier, loc.fmt)] += 1
        return page

    def add_holder(self, page: int, stream: int) -> None:
        self.pages[page].holders.add(stream)
        self.held.setdefault(stream, {})[page] = None

    def drop_holder(self, page: int, stream: int) -> bool:
        """`stream` lets go of `page`; True if that was the last reference (page freed)."""
        rec = self.pages[page]
        rec.holders.discard(stream)
        held = self.held[stream]
        del held[page]
        if not held:
            del self.held[stream]
        if rec.holders:
            return False
        del self.pages[page]
        self.give(rec.loc, rec.loc.fmt)
        self.page_count[(rec.loc.tier, rec.loc.fmt)] -= 1
        if rec.span is not None:
            self.leave_span(rec.span, page)
        return True

    def relocate(self, page: int, dst: PageLoc) -> None:
        """A committed plan moved or re-encoded `page` to `dst`: its old slot is freed."""
        rec = self.pages[page]
        self.give(rec.loc, rec.loc.fmt)
        self.page_count[(rec.loc.tier, rec.loc.fmt)] -= 1
        self.page_count[(dst.tier, dst.fmt)] += 1
        rec.loc = dst

    # -- spans ---------------------------------------------------------------------------------

    def add_span(
        self, span: int, fmt: str, codebook: PageLoc, pages: set[int], stream: int | None
    ) -> None:
        """Span `span` of `pages` (already re-pointed at it) with its codebook at `codebook`."""
        self.spans[span] = SpanRecord(fmt, codebook, pages, stream)
        self.cb_count[(codebook.tier, fmt)] += 1

    def set_span(self, page: int, span: int | None) -> None:
        """`page` now belongs to `span` (an encode committed); it leaves its old span."""
        rec = self.pages[page]
        old, rec.span = rec.span, span
        if old is not None:
            self.leave_span(old, page)

    def move_codebook(self, span: int, dst: PageLoc) -> None:
        rec = self.spans[span]
        src = rec.codebook
        self.give(src, codebook_kind(src.fmt))
        self.cb_count[(src.tier, src.fmt)] -= 1
        self.cb_count[(dst.tier, dst.fmt)] += 1
        rec.codebook = dst

    def leave_span(self, span: int, page: int) -> None:
        rec = self.spans[span]
        rec.pages.discard(page)
        if not rec.pages:  # last page gone: the codebook has no reader left
            del self.spans[span]
            self.give(rec.codebook, codebook_kind(rec.fmt))
            self.cb_count[(rec.codebook.tier, rec.fmt)] -= 1
