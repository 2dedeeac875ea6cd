"""Logical page ids, reference counts, spans and slots: the single-phase half of the pool.

`PageRefs` allocates, shares and releases pages and answers where they are; `pages.py`
builds the two-phase encode / move plans on top of it. Page ids are never reused, so a stale
id cannot alias a newer page (the ABA problem): an id below the next id that is not live was
freed, which tells use after free and double free apart from a foreign page in O(1).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from .layout import (
    TIERS,
    OutOfPages,
    PageError,
    PageLoc,
    Plan,
    PoolLayout,
    check_tier,
    codebook_kind,
)
from .slab import TierSlab

NULL_PAGE = 0
"""Reserved id for padding in page tables: never allocated, never freed, no storage."""


class _Page:
    __slots__ = ("loc", "holders", "span")

    def __init__(self, loc: PageLoc, holder: int) -> None:
        self.loc = loc  # committed location; a pending plan's dst is not it until commit
        self.holders = {holder}  # streams holding a ref; ref count = len(holders) >= 1
        self.span: int | None = None


class _Span:
    __slots__ = ("fmt", "codebook", "pages", "stream")

    def __init__(self, fmt: str, codebook: PageLoc, pages: set[int], stream: int | None) -> None:
        self.fmt = fmt
        self.codebook = codebook
        self.pages = pages  # live pages; the span (and its codebook) dies with the last one
        self.stream = stream  # the stream that encoded it (pages may since be shared)


class PageRefs:
    """Ids, ref counts, spans and slab slots of one pool; never touches a tensor.

    `debug` (default on) adds the O(table) `check_table`; the O(1) checks (double free, use
    after free, foreign page, locked page) always run.
    """

    NULL_PAGE = NULL_PAGE

    def __init__(self, layout: PoolLayout, *, debug: bool = True) -> None:
        self.layout = layout
        self.debug = debug
        items = layout.item_bytes
        self._slabs = {t: TierSlab(t, layout.blocks(t), items, layout.block_bytes) for t in TIERS}
        self._pages: dict[int, _Page] = {}
        self._spans: dict[int, _Span] = {}
        self._held: dict[int, dict[int, None]] = {}  # stream -> its pages, in allocation order
        self._plans: dict[int, Plan] = {}
        self._plan_spans: dict[int, tuple[int, ...]] = {}  # plan id -> spans it locks
        self._locked_pages: dict[int, int] = {}  # page -> id of the plan holding it
        self._locked_spans: dict[int, int] = {}  # span -> id of the plan holding it
        self._page_count: Counter[tuple[str, str]] = Counter()  # committed, by (tier, fmt)
        self._cb_count: Counter[tuple[str, str]] = Counter()  # live codebooks, by (tier, fmt)
        self._pending_bytes = dict.fromkeys(TIERS, 0)
        self._next = {"page": NULL_PAGE + 1, "span": 1, "plan": 1}

    # -- allocate / share / release ------------------------------------------------------------

    def allocate(
        self, stream: int, fmt: str, n: int, tier: str = "gpu"
    ) -> tuple[int, ...] | OutOfPages:
        """`n` new pages of `fmt` on `tier`, held by `stream`; all or nothing."""
        self._check_fmt(fmt)
        if n < 0:
            raise ValueError(f"n = {n}; ask for n >= 0 pages")
        short = self._slabs[check_tier(tier)].shortfall({fmt: n})
        if short is not None:
            return short
        held = self._held.setdefault(stream, {})
        ids = tuple(self._new_id("page") for _ in range(n))
        for page in ids:
            self._pages[page] = _Page(self._take(tier, fmt, fmt), stream)
            held[page] = None
        self._page_count[(tier, fmt)] += n
        if not held:
            del self._held[stream]
        return ids

    def share(self, page: int, stream: int) -> None:
        """`stream` takes a reference to committed page `page` (ref count + 1)."""
        rec = self._live(page)
        if stream in rec.holders:
            raise PageError(f"stream {stream} already holds page {page}; share it once")
        rec.holders.add(stream)
        self._held.setdefault(stream, {})[page] = None

    def release(self, stream: int, pages: Iterable[int]) -> tuple[int, ...]:
        """Drop `stream`'s reference to each page (NULL_PAGE skipped); return the pages freed.

        Validates everything before changing anything, so a PageError leaves no trace.
        """
        todo = [p for p in pages if p != NULL_PAGE]
        if len(set(todo)) != len(todo):
            raise PageError(f"release of stream {stream} names a page twice: {todo}")
        for page in todo:
            rec = self._held_by(stream, page)
            if len(rec.holders) == 1 and page in self._locked_pages:
                raise PageError(f"page {page} is under pending plan {self._locked_pages[page]}")
        freed = []
        held = self._held.get(stream, {})
        for page in todo:
            rec = self._pages[page]
            rec.holders.discard(stream)
            del held[page]
            if not rec.holders:
                self._free_page(page, rec)
                freed.append(page)
        if not held:
            self._held.pop(stream, None)
        return tuple(freed)

    def release_stream(self, stream: int) -> tuple[int, ...]:
        """Release every page `stream` holds; return the pages freed."""
        return self.release(stream, tuple(self._held.get(stream, ())))

    # -- queries -------------------------------------------------------------------------------

    def location(self, page: int) -> PageLoc:
        """Committed location of a live page."""
        return self._live(page).loc

    def span_of(self, page: int) -> int | None:
        """Span of a live page; None for pages never encoded into a codebook format."""
        return self._live(page).span

    def codebook(self, span: int) -> PageLoc:
        """Location of a live span's codebook."""
        if span not in self._spans:
            raise PageError(f"span {span} is not live (all its pages were freed or re-encoded)")
        return self._spans[span].codebook

    def span_pages(self, span: int) -> tuple[int, ...]:
        """Live pages of a live span, ascending."""
        self.codebook(span)
        return tuple(sorted(self._spans[span].pages))

    def refcount(self, page: int) -> int:
        """Streams holding a live page."""
        return len(self._live(page).holders)

    def pages_of(self, stream: int) -> tuple[int, ...]:
        """Pages `stream` holds a reference to, in the order it got them."""
        return tuple(self._held.get(stream, ()))

    def streams(self) -> tuple[int, ...]:
        """Streams holding at least one page."""
        return tuple(self._held)

    def check_table(self, stream: int, table: Sequence[int]) -> None:
        """PageError if `table` names a freed page or one `stream` does not hold (debug only)."""
        if self.debug:
            for page in table:
                if page != NULL_PAGE:
                    self._held_by(stream, page)

    def free_items(self, tier: str, kind: str) -> int:
        """Items of `kind` (a format or `codebook_kind(fmt)`) that still fit on `tier`."""
        self.layout.items_per_block(kind)  # ValueError for an unknown kind
        return self._slabs[check_tier(tier)].free_items(kind)

    # -- internals -----------------------------------------------------------------------------

    def _new_id(self, what: str) -> int:
        self._next[what] += 1
        return self._next[what] - 1

    def _check_fmt(self, fmt: str) -> None:
        if fmt not in self.layout.page_bytes:
            raise ValueError(f"fmt = {fmt!r}; the layout knows {sorted(self.layout.page_bytes)}")

    def _take(self, tier: str, fmt: str, kind: str) -> PageLoc:
        slab = self._slabs[tier]
        block, slot = slab.take(kind)
        return PageLoc(
            tier, fmt, block, slot, slab.offset(kind, block, slot), slab.item_bytes[kind]
        )

    def _give(self, loc: PageLoc, kind: str) -> None:
        self._slabs[loc.tier].give(kind, loc.block, loc.slot)

    def _live(self, page: int) -> _Page:
        rec = self._pages.get(page)
        if rec is not None:
            return rec
        if page == NULL_PAGE:
            raise PageError("page 0 is the null page: it has no storage and no owner")
        if NULL_PAGE < page < self._next["page"]:
            raise PageError(f"page {page} was freed (use after free or double free)")
        raise PageError(f"page {page} was never allocated")

    def _held_by(self, stream: int, page: int) -> _Page:
        rec = self._live(page)
        if stream not in rec.holders:
            raise PageError(
                f"stream {stream} does not hold page {page} (holders {sorted(rec.holders)}): "
                "a foreign page, or a reference already released"
            )
        return rec

    def _free_page(self, page: int, rec: _Page) -> None:
        del self._pages[page]
        self._give(rec.loc, rec.loc.fmt)
        self._page_count[(rec.loc.tier, rec.loc.fmt)] -= 1
        if rec.span is not None:
            self._leave_span(rec.span, page)

    def _leave_span(self, span: int, page: int) -> None:
        rec = self._spans[span]
        rec.pages.discard(page)
        if not rec.pages:  # last page gone: the codebook has no reader left
            del self._spans[span]
            self._give(rec.codebook, codebook_kind(rec.fmt))
            self._cb_count[(rec.codebook.tier, rec.fmt)] -= 1
