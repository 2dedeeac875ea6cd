"""Random workloads of the page allocator against a model of who holds what.

Every rule is followed by `check_invariants()` (a full recount) and a comparison of the
allocator's holders with the model's; teardown releases everything and expects every block
free. Derandomized, no example database: CI sees the same runs every time.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from scheduler.pages import OutOfPages, PageAllocator, PageError, Plan, PoolLayout

PAGE_BYTES = {"bf16": 4096, "qvg-int4": 1200, "qvg-int2": 600, "fp8": 2048}
CODEBOOK_BYTES = {"qvg-int4": 1500, "qvg-int2": 256}
LAYOUT = PoolLayout(4096, 10, 5, PAGE_BYTES, CODEBOOK_BYTES)  # small: OutOfPages is common

STREAMS = st.integers(0, 3)
FORMATS = st.sampled_from(sorted(PAGE_BYTES))
TIERS = st.sampled_from(["gpu", "cpu"])
OUTCOMES = st.sampled_from(["commit", "commit", "abort", "keep"])  # keep: left pending


class PagePool(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.alloc = PageAllocator(LAYOUT)
        self.holders: dict[int, set[int]] = {}  # live page -> streams holding it
        self.pending: dict[int, Plan] = {}
        self.freed: set[int] = set()

    # -- model helpers ------------------------------------------------------------------------

    def held(self, stream: int) -> list[int]:
        return list(self.alloc.pages_of(stream))

    def locked(self) -> tuple[set[int], set[int]]:
        pages = {r.page for plan in self.pending.values() for r in plan.relocations}
        spans = {self.alloc.span_of(p) for p in pages} - {None}
        return pages, spans  # type: ignore[return-value]

    def conflicts(self, pages: list[int]) -> bool:
        locked_pages, locked_spans = self.locked()
        return any(p in locked_pages or self.alloc.span_of(p) in locked_spans for p in pages)

    def started(self, plan: Plan | OutOfPages, before: object, outcome: str) -> None:
        if isinstance(plan, OutOfPages):
            assert plan.free_items < plan.needed_items
            assert self.alloc.stats() == before  # all or nothing
            return
        self.pending[plan.id] = plan
        if outcome != "keep":
            self.finish_plan(plan, outcome == "commit")

    def finish_plan(self, plan: Plan, commit: bool) -> None:
        del self.pending[plan.id]
        (self.alloc.commit if commit else self.alloc.abort)(plan)
        want = [r.dst if commit else r.src for r in plan.relocations]
        assert [self.alloc.location(r.page) for r in plan.relocations] == want

    def do_release(self, stream: int, pages: list[int]) -> None:
        last = [p for p in pages if self.holders[p] == {stream}]
        locked_pages, _ = self.locked()
        if any(p in locked_pages for p in last):
            before = self.alloc.stats()
            try:
                self.alloc.release(stream, pages)
            except PageError:
                assert self.alloc.stats() == before
                return
            raise AssertionError("releasing a page under a pending plan must raise")
        assert set(self.alloc.release(stream, pages)) == set(last)
        for page in pages:
            self.holders[page].discard(stream)
        for page in last:
            del self.holders[page]
        self.freed.update(last)

    # -- rules --------------------------------------------------------------------------------

    @rule(stream=STREAMS, fmt=FORMATS, n=st.integers(1, 4), tier=TIERS)
    def allocate(self, stream: int, fmt: str, n: int, tier: str) -> None:
        before = self.alloc.stats()
        got = self.alloc.allocate(stream, fmt, n, tier)
        if isinstance(got, OutOfPages):
            assert got.free_items < n and self.alloc.stats() == before
            return
        assert len(got) == n and 0 not in got
        self.holders.update({p: {stream} for p in got})

    @precondition(lambda self: self.holders)
    @rule(data=st.data(), stream=STREAMS)
    def share(self, data: st.DataObject, stream: int) -> None:
        page = data.draw(st.sampled_from(sorted(self.holders)))
        if stream in self.holders[page]:
            try:
                self.alloc.share(page, stream)
            except PageError:
                return
            raise AssertionError("sharing a page twice with one stream must raise")
        self.alloc.share(page, stream)
        self.holders[page].add(stream)

    @rule(data=st.data(), stream=STREAMS)
    def release(self, data: st.DataObject, stream: int) -> None:
        held = self.held(stream)
        if held:
            self.do_release(stream, data.draw(st.lists(st.sampled_from(held), unique=True)))

    @rule(stream=STREAMS)
    def release_stream(self, stream: int) -> None:
        self.do_release(stream, self.held(stream))

    @precondition(lambda self: self.holders)
    @rule(data=st.data(), fmt=FORMATS, outcome=OUTCOMES)
    def encode(self, data: st.DataObject, fmt: str, outcome: str) -> None:
        streams = sorted({s for holders in self.holders.values() for s in holders})
        stream = data.draw(st.sampled_from(streams))
        held = self.held(stream)
        start = data.draw(st.integers(0, len(held) - 1))
        run = held[start : start + data.draw(st.integers(1, 4))]
        before = self.alloc.stats()
        if self.conflicts(run):
            try:
                self.alloc.begin_encode(stream, run, fmt)
            except PageError:
                assert self.alloc.stats() == before
                return
            raise AssertionError("encoding a locked page or span must raise")
        self.started(self.alloc.begin_encode(stream, run, fmt), before, outcome)

    def try_move(self, chosen: list[int], tier: str, outcome: str) -> None:
        before = self.alloc.stats()
        if self.conflicts(chosen):
            try:
                self.alloc.begin_move(chosen, tier)
            except PageError:
                assert self.alloc.stats() == before
                return
            raise AssertionError("moving a locked page or span must raise")
        self.started(self.alloc.begin_move(chosen, tier), before, outcome)

    @precondition(lambda self: self.holders)
    @rule(data=st.data(), tier=TIERS, outcome=OUTCOMES)
    def move(self, data: st.DataObject, tier: str, outcome: str) -> None:
        movable = sorted(p for p in self.holders if self.alloc.location(p).tier != tier)
        if movable:
            pages = st.lists(st.sampled_from(movable), min_size=1, max_size=4, unique=True)
            self.try_move(data.draw(pages), tier, outcome)

    @precondition(lambda self: any(self.alloc.span_of(p) is not None for p in self.holders))
    @rule(data=st.data(), tier=TIERS, outcome=OUTCOMES)
    def move_part_of_a_span(self, data: st.DataObject, tier: str, outcome: str) -> None:
        """Partial offloads and reloads: where the codebook tier rule matters."""
        spans = sorted({self.alloc.span_of(p) for p in self.holders} - {None})
        span = data.draw(st.sampled_from(spans))
        pages = self.alloc.span_pages(span)  # type: ignore[arg-type]
        movable = [p for p in pages if self.alloc.location(p).tier != tier]
        if movable:
            chosen = st.lists(st.sampled_from(movable), min_size=1, unique=True)
            self.try_move(data.draw(chosen), tier, outcome)

    @precondition(lambda self: self.pending)
    @rule(data=st.data(), commit=st.booleans())
    def finish(self, data: st.DataObject, commit: bool) -> None:
        plan = self.pending[data.draw(st.sampled_from(sorted(self.pending)))]
        self.finish_plan(plan, commit)

    @precondition(lambda self: self.freed)
    @rule(data=st.data())
    def use_after_free(self, data: st.DataObject) -> None:
        page = data.draw(st.sampled_from(sorted(self.freed)))
        for use in (self.alloc.location, lambda p: self.alloc.check_table(0, [p])):
            try:
                use(page)
            except PageError:
                continue
            raise AssertionError(f"use of freed page {page} must raise")

    # -- invariants ---------------------------------------------------------------------------

    @invariant()
    def accounting_is_consistent(self) -> None:
        self.alloc.check_invariants()

    @invariant()
    def holders_match_the_model(self) -> None:
        for stream in range(4):
            want = {p for p, s in self.holders.items() if stream in s}
            assert set(self.alloc.pages_of(stream)) == want
            self.alloc.check_table(stream, sorted(want))
        assert all(self.alloc.refcount(p) == len(s) for p, s in self.holders.items())

    @invariant()
    def gpu_pages_have_gpu_codebooks(self) -> None:
        for page in self.holders:
            span = self.alloc.span_of(page)
            if span is not None and self.alloc.location(page).tier == "gpu":
                assert self.alloc.codebook(span).tier == "gpu"

    def teardown(self) -> None:
        for plan in list(self.pending.values()):
            self.finish_plan(plan, commit=False)
        for stream in range(4):
            self.alloc.release_stream(stream)
        self.alloc.check_invariants()
        stats = self.alloc.stats()
        assert stats.free_blocks == {"gpu": LAYOUT.gpu_blocks, "cpu": LAYOUT.cpu_blocks}
        assert stats.pages == {} and stats.codebooks == {} and stats.spans == 0


PagePool.TestCase.settings = settings(
    max_examples=200,  # ~4 s on one core; raise locally to hunt bugs
    stateful_step_count=50,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_page_pool = PagePool.TestCase
