"""The tensor side of the pool: exact sizes, writes, encode/move plans, reads."""

from __future__ import annotations

import random

import pytest
import torch

from kernels import codec
from kernels.spec import get_spec
from qvg_serve.engine import kv_format as kf
from qvg_serve.engine.kv_pool import KVPool, pool_layout
from scheduler.pages import OutOfPages, PageAllocator

KV = kf.KVShape(layers=2, heads=2, head_dim=64, page_tokens=12)
# Few centroids: tiny spans (24-48 tokens) would leave most of 256 centroids empty.
SPECS = {f: get_spec(f).with_kmeans(centroids=8, iters=2) for f in ("qvg-int2", "qvg-int4")}
FORMATS = ("bf16", "qvg-int4", "qvg-int2")


def make_pool(gpu_pages=40, cpu_pages=0):
    page = kf.page_bytes("bf16", KV)
    layout = pool_layout(KV, FORMATS, gpu_pages * page, cpu_pages * page, SPECS)
    alloc = PageAllocator(layout)
    return KVPool(KV, alloc, "cpu", SPECS), alloc


def chunk(n_pages, seed):
    g = torch.Generator().manual_seed(seed)
    shape = (KV.layers, KV.heads, n_pages * KV.page_tokens, KV.head_dim)
    return torch.randn(shape, generator=g).bfloat16(), torch.randn(shape, generator=g).bfloat16()


def scattered(alloc, stream, n, fmt="bf16"):
    """n pages whose ids (and slots) are not in order: other streams' pages in between."""
    pages = []
    for i in range(n):
        alloc.allocate(1000 + i, fmt, random.Random(i).randint(0, 2))  # fillers
        pages += alloc.allocate(stream, fmt, 1)
    return pages


def test_sizes_match_codec_bytes_exactly():
    n = 3
    for fmt in ("qvg-int2", "qvg-int4"):
        spec = SPECS[fmt]
        per_tensor = codec.predict_nbytes(spec, (1, KV.heads, n * KV.page_tokens, KV.head_dim))
        pool = n * kf.page_bytes(spec, KV) + kf.codebook_bytes(spec, KV)
        # each (layer, kv) slice of an item is padded to kf.ALIGN bytes, nothing else differs
        assert 0 <= pool - 2 * KV.layers * per_tensor < kf.ALIGN * 2 * KV.layers * (n + 1)
    sf = kf.KVShape(layers=30, heads=12, head_dim=128, page_tokens=1560)
    assert kf.page_bytes("bf16", sf) == 2 * 30 * 1560 * 12 * 128 * 2
    # Self-Forcing shapes need no padding: the pool stores exactly what the codec counts
    span = codec.predict_nbytes("qvg-int2", (1, 12, 8 * 1560, 128))
    assert 8 * kf.page_bytes("qvg-int2", sf) + kf.codebook_bytes("qvg-int2", sf) == 60 * span


def test_bf16_pages_roundtrip_with_scattered_ids():
    pool, alloc = make_pool()
    pages = scattered(alloc, 1, 3)
    k, v = chunk(3, 0)
    pool.write_pages(pages, k, v)
    got = pool.read_layer(pool.read_plan(pages), layer=1)
    assert torch.equal(got[0], k[1]) and torch.equal(got[1], v[1])
    pool.check_invariants()


def test_write_rejects_wrong_shape():
    pool, alloc = make_pool()
    pages = alloc.allocate(1, "bf16", 2)
    k, v = chunk(1, 0)
    with pytest.raises(ValueError, match="write_pages"):
        pool.write_pages(pages, k, v)


@pytest.mark.parametrize("fmt", ["qvg-int2", "qvg-int4"])
def test_encode_plan_equals_codec_reference(fmt):
    pool, alloc = make_pool()
    pages = scattered(alloc, 1, 3)
    k, v = chunk(3, 1)
    pool.write_pages(pages, k, v)
    plan = alloc.begin_encode(1, pages, fmt)
    assert not isinstance(plan, OutOfPages)
    pool.execute(plan)
    alloc.commit(plan)
    pool.check_invariants()
    for layer in range(KV.layers):  # one batched encode == a codec call per layer and half
        got = pool.read_layer(pool.read_plan(pages), layer=layer)
        for half, x in enumerate((k[layer], v[layer])):
            enc = codec.encode(x[None], SPECS[fmt], role="kv"[half], backend="reference")
            assert torch.equal(got[half], codec.decode(enc, backend="reference")[0])


def test_encode_batch_size_does_not_change_bytes():
    """Layers per codec call (encode_batch_bytes) is a speed knob only: same bytes written."""
    items = []
    for batch in (1, 1 << 30):  # one layer per call / all layers in one call
        pool, alloc = make_pool()
        pool.encode_batch_bytes = batch
        pages = alloc.allocate(1, "bf16", 3)
        pool.write_pages(pages, *chunk(3, 4))
        for run in (pages[:2], pages[2:]):  # the second span warm-starts from the first
            plan = alloc.begin_encode(1, run, "qvg-int2")
            pool.execute(plan)
            alloc.commit(plan)
        books = [alloc.codebook(alloc.span_of(p)) for p in (pages[0], pages[2])]
        locs = [alloc.location(p) for p in pages] + books
        items.append([pool.item(loc).clone() for loc in locs])
    for a, b in zip(*items, strict=True):
        assert torch.equal(a, b)


def test_reencode_int4_to_int2_and_warm_start():
    pool, alloc = make_pool()
    pages = alloc.allocate(1, "bf16", 4)
    k, v = chunk(4, 2)
    pool.write_pages(pages, k, v)
    for fmt, run in (("qvg-int4", pages[:2]), ("qvg-int2", pages[2:]), ("qvg-int2", pages[:2])):
        plan = alloc.begin_encode(1, run, fmt)
        pool.execute(plan)
        alloc.commit(plan)
        pool.check_invariants()
    assert {alloc.location(p).fmt for p in pages} == {"qvg-int2"}
    got = pool.read_layer(pool.read_plan(pages), 1).float()
    rel = (got[0] - k[1].float()).square().sum() / k[1].float().square().sum()
    assert rel < 0.5  # Gaussian data at 2 bits, 8 centroids: ~0.1; garbage would be ~1+


def test_warm_start_reads_previous_span_centroids():
    spec0 = {f: s.with_kmeans(iters=0, warm_iters=0) for f, s in SPECS.items()}
    page = kf.page_bytes("bf16", KV)
    alloc = PageAllocator(pool_layout(KV, FORMATS, 20 * page, 0, spec0))
    pool = KVPool(KV, alloc, "cpu", spec0)
    pages = alloc.allocate(1, "bf16", 2)
    pool.write_pages(pages, *chunk(2, 3))
    plans = []
    for p in pages:
        plan = alloc.begin_encode(1, [p], "qvg-int2")
        pool.execute(plan)
        alloc.commit(plan)
        plans.append(plan)
    a, b = (
        kf.split_codebook(pool.item(alloc.codebook(pl.span)), spec0["qvg-int2"], KV) for pl in plans
    )
    for layer in range(KV.layers):
        for half in range(2):  # 0 iterations from the warm start: the same centroids
            assert torch.equal(a[layer][half]["centroids.0"], b[layer][half]["centroids.0"])
    cold = codec.encode(torch.randn(1, 2, 12, 64), spec0["qvg-int2"])
    assert not torch.equal(cold.tensors["centroids.0"][0], a[0][0]["centroids.0"])


def test_move_to_cpu_and_back_is_bit_exact():
    pool, alloc = make_pool(gpu_pages=20, cpu_pages=10)
    pages = alloc.allocate(1, "bf16", 2)
    pool.write_pages(pages, *chunk(2, 4))
    plan = alloc.begin_encode(1, pages, "qvg-int2")
    pool.execute(plan)
    alloc.commit(plan)
    before = pool.read_layer(pool.read_plan(pages), 0).clone()
    out = alloc.begin_move(pages, "cpu")
    pool.execute(out)
    alloc.commit(out)
    with pytest.raises(ValueError, match="reload it first"):
        pool.read_plan(pages)
    back = alloc.begin_move(pages, "gpu")
    pool.execute(back)
    alloc.commit(back)
    pool.check_invariants()
    assert torch.equal(pool.read_layer(pool.read_plan(pages), 0), before)


def test_layout_mismatch_is_refused():
    page = kf.page_bytes("bf16", KV)
    alloc = PageAllocator(pool_layout(KV, FORMATS, 10 * page, 0, SPECS))
    with pytest.raises(ValueError, match="layout sizes"):
        KVPool(KV, alloc, "cpu")  # default presets: 256 centroids, other codebook size


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_read_into_workspace_view_is_bit_exact(backend):
    """bf16 + qvg-int4 + qvg-int2 runs decoded straight into a token-major workspace slice."""
    pool, alloc = make_pool()
    pool.backend = backend
    pages = scattered(alloc, 1, 5)
    k, v = chunk(5, 6)
    pool.write_pages(pages, k, v)
    for fmt, run in (("qvg-int4", pages[1:3]), ("qvg-int2", pages[3:])):
        plan = alloc.begin_encode(1, run, fmt)
        pool.execute(plan)
        alloc.commit(plan)
    rp = pool.read_plan(pages)
    assert [r.fmt for r in rp.runs] == ["bf16", "qvg-int4", "qvg-int2"]
    want = pool.read_layer(rp, 1)
    ws = torch.full((2, rp.tokens + 9, KV.heads, KV.head_dim), 7.0, dtype=torch.bfloat16)
    view = ws[:, 4 : 4 + rp.tokens].transpose(1, 2)  # [2, H, tokens, D], strided in H and S
    assert pool.read_layer(rp, 1, out=view) is view
    assert torch.equal(view, want)
    ws[:, 4 : 4 + rp.tokens] = 7.0
    assert bool((ws == 7.0).all())  # nothing outside the slice was written
    with pytest.raises(ValueError, match="bfloat16"):
        pool.read_layer(rp, 1, out=torch.empty(2, KV.heads, rp.tokens, KV.head_dim))
    with pytest.raises(ValueError, match="bfloat16"):
        pool.read_layer(rp, 1, out=view[:, :, 1:])


def test_freed_warm_start_span_is_logged_and_encodes_cold(caplog):
    pool, alloc = make_pool()
    first = alloc.allocate(1, "bf16", 1)
    pool.write_pages(first, *chunk(1, 7))
    plan = alloc.begin_encode(1, first, "qvg-int2")
    pool.execute(plan)
    alloc.commit(plan)
    alloc.release(1, first)  # the span's only page: the span (and its codebook) is gone
    second = alloc.allocate(1, "bf16", 1)
    pool.write_pages(second, *chunk(1, 8))
    plan = alloc.begin_encode(1, second, "qvg-int2")
    with caplog.at_level("INFO", logger="qvg_serve.engine.kv_pool"):
        pool.execute(plan)
    alloc.commit(plan)
    assert "no warm start" in caplog.text and "encoding cold" in caplog.text
    pool.check_invariants()


@pytest.mark.parametrize("deferred", [False, True])
def test_encode_of_nan_pages_is_refused_before_commit(deferred):
    """NaN K/V never reach a committed QVG page: execute raises at once, or (deferred, as the
    engine's Orders run it: one host sync per step) finish_checks raises for that plan, and
    the allocator still holds the bf16 pages."""
    from types import SimpleNamespace

    from qvg_serve.engine.orders import Orders

    pool, alloc = make_pool()
    pages = alloc.allocate(1, "bf16", 2)
    k, v = chunk(2, 0)
    k[1, 0, 5, 3] = float("nan")
    pool.write_pages(pages, k, v)
    plan = alloc.begin_encode(1, pages, "qvg-int2")
    with pytest.raises(ValueError, match="non-finite"):
        if deferred:
            Orders(pool, torch.device("cpu"), overlap=True).run([SimpleNamespace(plan=plan)])
        else:
            pool.execute(plan)
    alloc.abort(plan)
    assert [alloc.location(p).fmt for p in pages] == ["bf16", "bf16"]
    pool.finish_checks()  # nothing left over from the failed run
