"""Unit tests of the page accounting: one invariant per test, CPU only, standard library."""

from __future__ import annotations

import pytest

from scheduler.pages import (
    NULL_PAGE,
    InvariantError,
    OutOfPages,
    PageAllocator,
    PageError,
    PoolLayout,
    codebook_kind,
)

BLOCK = 4096
PAGE_BYTES = {"bf16": 4096, "qvg-int4": 1200, "qvg-int2": 600, "fp8": 2048}
CODEBOOK_BYTES = {"qvg-int4": 1500, "qvg-int2": 256}  # fp8 and bf16: no codebook


def make(gpu: int = 8, cpu: int = 4, debug: bool = True) -> PageAllocator:
    layout = PoolLayout(BLOCK, gpu, cpu, PAGE_BYTES, CODEBOOK_BYTES)
    return PageAllocator(layout, debug=debug)


def pages(result: tuple[int, ...] | OutOfPages) -> tuple[int, ...]:
    assert not isinstance(result, OutOfPages), result
    return result


def all_free(alloc: PageAllocator) -> bool:
    st = alloc.stats()
    return st.free_blocks == {"gpu": alloc.layout.gpu_blocks, "cpu": alloc.layout.cpu_blocks}


def encoded(alloc: PageAllocator, stream: int, ids: tuple[int, ...], fmt: str) -> int:
    """Encode + commit; returns the new span id."""
    plan = alloc.begin_encode(stream, ids, fmt)
    assert not isinstance(plan, OutOfPages) and plan.span is not None
    alloc.commit(plan)
    alloc.check_invariants()
    return plan.span


def test_allocate_release_round_trip():
    alloc = make()
    ids = pages(alloc.allocate(1, "bf16", 3))
    assert alloc.pages_of(1) == ids and alloc.stats().pages == {("gpu", "bf16"): 3}
    assert alloc.release(1, ids) == ids
    alloc.check_invariants()
    assert alloc.pages_of(1) == () and all_free(alloc)


def test_freed_slot_is_reused_first():
    alloc = make()
    ids = pages(alloc.allocate(1, "qvg-int2", 4))
    hole = alloc.location(ids[1])
    alloc.release(1, [ids[1]])
    (new,) = pages(alloc.allocate(2, "qvg-int2", 1))
    assert new not in ids  # ids are never reused ...
    assert alloc.location(new) == hole  # ... but the freed slot is, before any fresh one


def test_out_of_pages_is_all_or_nothing():
    alloc = make(gpu=2, cpu=0)
    pages(alloc.allocate(1, "qvg-int2", 5))
    before = alloc.stats()
    short = alloc.allocate(2, "qvg-int2", 8)  # 1 free slot + 1 block of 6 = 7 < 8
    assert short == OutOfPages("gpu", "qvg-int2", 8, 7)
    assert alloc.stats() == before and alloc.pages_of(2) == ()
    alloc.check_invariants()


def test_encode_counts_its_codebook_against_the_budget():
    alloc = make(gpu=3, cpu=0)
    ids = pages(alloc.allocate(1, "bf16", 2))  # 1 block left: int2 pages fit, codebook does not
    assert alloc.stats().fits("qvg-int2", 2) and not alloc.stats().fits(
        "qvg-int2", 2, codebook=True
    )
    short = alloc.begin_encode(1, ids, "qvg-int2")
    assert short == OutOfPages("gpu", codebook_kind("qvg-int2"), 1, 0)
    assert alloc.stats().pending_plans == 0


def test_null_page_is_never_handed_out():
    alloc = make(gpu=2, cpu=0)
    ids = pages(alloc.allocate(1, "qvg-int2", 12))
    assert NULL_PAGE not in ids and PageAllocator.NULL_PAGE == NULL_PAGE == 0
    with pytest.raises(PageError, match="null page"):
        alloc.location(NULL_PAGE)
    assert alloc.release(1, [NULL_PAGE]) == ()  # table padding is skipped
    alloc.check_table(1, [NULL_PAGE, ids[0]])


def test_typed_block_returns_to_free_list_when_empty():
    alloc = make(gpu=2, cpu=0)
    ids = pages(alloc.allocate(1, "qvg-int2", 6))  # exactly one block
    assert alloc.stats().blocks_by_kind[("gpu", "qvg-int2")] == 1
    alloc.release(1, ids[:5])
    assert alloc.stats().free_blocks["gpu"] == 1  # one int2 page still types the block
    alloc.release(1, ids[5:])
    assert alloc.stats().free_blocks["gpu"] == 2
    pages(alloc.allocate(1, "bf16", 2))  # the block now serves another kind
    alloc.check_invariants()


def test_share_frees_only_at_the_last_reference():
    alloc = make()
    (page,) = pages(alloc.allocate(1, "bf16", 1))
    alloc.share(page, 2)
    assert alloc.refcount(page) == 2
    assert alloc.release(1, [page]) == ()
    assert alloc.location(page).fmt == "bf16" and alloc.pages_of(2) == (page,)
    assert alloc.release(2, [page]) == (page,)
    assert all_free(alloc)


def test_double_free_raises():
    alloc = make()
    (page,) = pages(alloc.allocate(1, "bf16", 1))
    alloc.release(1, [page])
    with pytest.raises(PageError, match="freed"):
        alloc.release(1, [page])


def test_double_release_of_a_shared_page_raises():
    alloc = make()
    (page,) = pages(alloc.allocate(1, "bf16", 1))
    alloc.share(page, 2)
    alloc.release(1, [page])
    with pytest.raises(PageError, match="does not hold"):
        alloc.release(1, [page])
    assert alloc.refcount(page) == 1


def test_use_after_free_raises():
    alloc = make()
    (page,) = pages(alloc.allocate(1, "bf16", 1))
    alloc.release(1, [page])
    for use in (alloc.location, alloc.span_of, lambda p: alloc.share(p, 2)):
        with pytest.raises(PageError, match="use after free"):
            use(page)
    with pytest.raises(PageError, match="freed"):
        alloc.check_table(1, [page])


def test_foreign_table_raises_and_changes_nothing():
    alloc = make()
    mine = pages(alloc.allocate(1, "bf16", 2))
    theirs = pages(alloc.allocate(2, "bf16", 1))
    with pytest.raises(PageError, match="stream 1 does not hold"):
        alloc.check_table(1, [*mine, *theirs])
    with pytest.raises(PageError, match="does not hold"):
        alloc.release(1, [*mine, *theirs])
    assert alloc.pages_of(1) == mine  # validated before anything was released
    make(debug=False).check_table(1, [12345])  # the O(table) check is debug only


def test_encode_commit_keeps_ids_and_frees_sources():
    alloc = make()
    ids = pages(alloc.allocate(1, "bf16", 3))
    plan = alloc.begin_encode(1, ids, "qvg-int2")
    assert not isinstance(plan, OutOfPages) and plan.codebook is not None
    alloc.check_invariants()
    alloc.commit(plan)
    alloc.check_invariants()
    assert alloc.pages_of(1) == ids
    assert [alloc.location(p) for p in ids] == [r.dst for r in plan.relocations]
    assert {alloc.span_of(p) for p in ids} == {plan.span}
    assert alloc.codebook(plan.span) == plan.codebook  # type: ignore[arg-type]
    assert alloc.stats().pages == {("gpu", "qvg-int2"): 3}


def test_encode_abort_changes_nothing():
    alloc = make()
    ids = pages(alloc.allocate(1, "bf16", 3))
    before = alloc.stats()
    plan = alloc.begin_encode(1, ids, "qvg-int4")
    assert not isinstance(plan, OutOfPages)
    alloc.abort(plan)
    alloc.check_invariants()
    assert alloc.stats() == before and {alloc.span_of(p) for p in ids} == {None}
    with pytest.raises(PageError, match="not pending"):
        alloc.commit(plan)


def test_pending_plan_holds_source_and_destination_bytes():
    alloc = make()
    ids = pages(alloc.allocate(1, "bf16", 2))
    plan = alloc.begin_encode(1, ids, "qvg-int2")
    assert not isinstance(plan, OutOfPages)
    st = alloc.stats()
    assert st.used_bytes == {("gpu", "bf16"): 2 * 4096, ("gpu", "qvg-int2"): 2 * 600 + 256}
    assert st.pending_bytes["gpu"] == 2 * 600 + 256


def test_pending_plan_locks_its_pages():
    alloc = make()
    ids = pages(alloc.allocate(1, "bf16", 2))
    plan = alloc.begin_encode(1, ids, "qvg-int2")
    assert not isinstance(plan, OutOfPages)
    with pytest.raises(PageError, match="pending plan"):
        alloc.release_stream(1)
    with pytest.raises(PageError, match="pending plan"):
        alloc.begin_move(ids[:1], "cpu")
    alloc.share(ids[0], 2)
    assert alloc.release(2, [ids[0]]) == ()  # dropping a non-last ref is fine
    alloc.commit(plan)
    assert alloc.release_stream(1) == ids


def test_reencode_int4_to_int2_frees_the_old_codebook_with_its_last_page():
    alloc = make()
    ids = pages(alloc.allocate(1, "bf16", 4))
    old = encoded(alloc, 1, ids, "qvg-int4")
    first = encoded(alloc, 1, ids[:2], "qvg-int2")
    assert alloc.span_pages(old) == ids[2:]  # old span lives on for its other pages
    second = encoded(alloc, 1, ids[2:], "qvg-int2")
    with pytest.raises(PageError, match="not live"):
        alloc.codebook(old)
    assert alloc.stats().codebooks == {("gpu", "qvg-int2"): 2} and first != second
    assert alloc.stats().pages == {("gpu", "qvg-int2"): 4}


def test_encode_to_a_format_without_codebook_leaves_no_span():
    alloc = make()
    ids = pages(alloc.allocate(1, "bf16", 2))
    old = encoded(alloc, 1, ids, "qvg-int4")
    plan = alloc.begin_encode(1, ids, "fp8")
    assert not isinstance(plan, OutOfPages) and plan.span is None and plan.codebook is None
    alloc.commit(plan)
    alloc.check_invariants()
    assert {alloc.span_of(p) for p in ids} == {None} and alloc.stats().spans == 0
    with pytest.raises(PageError):
        alloc.codebook(old)


def move(alloc: PageAllocator, ids: tuple[int, ...], tier: str) -> tuple[int, ...]:
    """Move + commit; returns the spans whose codebook travelled."""
    plan = alloc.begin_move(ids, tier)
    assert not isinstance(plan, OutOfPages)
    alloc.commit(plan)
    alloc.check_invariants()
    return tuple(m.span for m in plan.codebook_moves)


def test_offload_and_reload_codebook_follows_the_pages():
    alloc = make()
    ids = pages(alloc.allocate(1, "bf16", 3))
    span = encoded(alloc, 1, ids, "qvg-int2")
    assert move(alloc, ids[:2], "cpu") == ()  # ids[2] still reads the codebook on gpu
    assert move(alloc, ids[2:], "cpu") == (span,)  # last gpu page left: codebook offloaded
    assert alloc.codebook(span).tier == "cpu"
    assert move(alloc, ids[:1], "gpu") == (span,)  # decode on gpu needs the codebook there
    assert [alloc.location(p).tier for p in ids] == ["gpu", "cpu", "cpu"]
    assert alloc.codebook(span).tier == "gpu" and alloc.pages_of(1) == ids


def test_move_to_a_tier_without_blocks_is_out_of_pages():
    alloc = make(cpu=0)
    ids = pages(alloc.allocate(1, "bf16", 1))
    assert alloc.begin_move(ids, "cpu") == OutOfPages("cpu", "bf16", 1, 0)
    with pytest.raises(PageError, match="already on gpu"):
        alloc.begin_move(ids, "gpu")


def test_codebook_lives_while_any_span_page_lives():
    alloc = make()
    ids = pages(alloc.allocate(1, "bf16", 3))
    span = encoded(alloc, 1, ids, "qvg-int4")
    for i, page in enumerate(ids[:-1]):
        alloc.release(1, [page])
        assert alloc.codebook(span).nbytes == 1500 and alloc.span_pages(span) == ids[i + 1 :]
    alloc.release(1, ids[-1:])
    assert alloc.stats().codebooks == {} and all_free(alloc)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"block_bytes": 0}, "block_bytes"),
        ({"gpu_blocks": 0}, "gpu_blocks"),
        ({"cpu_blocks": -1}, "cpu_blocks"),
        ({"page_bytes": {}}, "page_bytes"),
        ({"page_bytes": {"bf16": 0}}, "page_bytes"),
        ({"page_bytes": {**PAGE_BYTES, "bf16": 5000}}, "block_bytes"),
        ({"codebook_bytes": {"qvg-int4": 9000}}, "block_bytes"),
        ({"codebook_bytes": {"nope": 8}}, "codebook_bytes"),
        ({"codebook_bytes": {"qvg-int4": -1}}, "codebook_bytes"),
    ],
)
def test_layout_validation_names_the_field(kwargs, field):
    args = {"block_bytes": BLOCK, "gpu_blocks": 4, "cpu_blocks": 0}
    args |= {"page_bytes": PAGE_BYTES, "codebook_bytes": CODEBOOK_BYTES} | kwargs
    with pytest.raises(ValueError, match=field):
        PoolLayout(**args)


def test_from_budget_aligns_blocks_and_counts_them():
    layout = PoolLayout.from_budget(
        {"bf16": 1560, "qvg-int2": 230}, {"qvg-int2": 100}, 10_000, 3_000
    )
    assert (layout.block_bytes, layout.gpu_blocks, layout.cpu_blocks) == (1536 + 512, 4, 1)
    assert layout.items_per_block("qvg-int2") == 2048 // 230
    with pytest.raises(ValueError, match="gpu_budget_bytes"):
        PoolLayout.from_budget({"bf16": 1560}, {}, 1000)


def test_stats_bytes_equal_item_sizes():
    alloc = make()
    a = pages(alloc.allocate(1, "bf16", 5))
    encoded(alloc, 1, a[:3], "qvg-int2")
    encoded(alloc, 1, a[3:], "qvg-int4")
    move(alloc, a[3:], "cpu")
    st = alloc.stats()
    gpu, cpu = 3 * 600 + 256, 2 * 1200 + 1500  # pages + one codebook each
    assert st.used_bytes == {("gpu", "qvg-int2"): gpu, ("cpu", "qvg-int4"): cpu}
    assert st.free_bytes == {"gpu": 8 * BLOCK - gpu, "cpu": 4 * BLOCK - cpu}
    assert st.pages == {("gpu", "qvg-int2"): 3, ("cpu", "qvg-int4"): 2}


def test_stats_fits_agrees_with_allocate():
    alloc = make(gpu=2, cpu=0)
    pages(alloc.allocate(1, "qvg-int4", 2))  # block 0: 1 free int4 slot; block 1 free
    st = alloc.stats()
    assert st.free_items("gpu", "qvg-int4") == alloc.free_items("gpu", "qvg-int4") == 4
    assert st.fits("qvg-int4", 4) and not st.fits("qvg-int4", 5)
    assert not isinstance(alloc.allocate(2, "qvg-int4", 4), OutOfPages)


def test_check_invariants_catches_a_corrupted_record():
    alloc = make()
    (page,) = pages(alloc.allocate(1, "bf16", 1))
    alloc.check_invariants()
    alloc._rec.pages[page].holders.add(9)  # a holder the stream index does not know
    with pytest.raises(InvariantError, match="holder"):
        alloc.check_invariants()


def test_check_invariants_catches_a_leaked_slot():
    alloc = make()
    pages(alloc.allocate(1, "qvg-int2", 2))
    alloc._rec.slabs["gpu"].take("qvg-int2")  # a slot no record owns
    with pytest.raises(InvariantError):
        alloc.check_invariants()
