"""Batched attention through the pool equals dense attention over the same K/V."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import tol
from test_kv_pool import FORMATS, SPECS, chunk, make_pool, scattered

from kernels import codec
from qvg_serve.engine import kv_format as kf
from qvg_serve.engine.kv_pool import KVPool, pool_layout
from qvg_serve.engine.paged_attention import (
    BatchRead,
    StreamChunk,
    Workspace,
    batch_attention,
    rope_1d,
)
from scheduler.pages import PageAllocator

H, D, T = 2, 64, 12


def dense(q, k_hist, v_hist, k_new, v_new, hist_pos, q_pos):
    """Reference: one stream, contiguous cache, RoPE at the same positions."""
    k = torch.cat([rope_1d(k_hist, hist_pos), rope_1d(k_new, q_pos)])
    v = torch.cat([v_hist, v_new])
    qr = rope_1d(q, q_pos)
    out = F.scaled_dot_product_attention(
        qr.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None]
    )
    return out[0].transpose(0, 1)


def _stream(pool: KVPool, alloc, sid: int, n_pages: int, seed: int, encode: str | None):
    pages = scattered(alloc, sid, n_pages)
    k, v = chunk(n_pages, seed)
    pool.write_pages(pages, k, v)
    if encode and n_pages > 1:  # sink page stays bf16, the rest is one quantized span
        plan = alloc.begin_encode(sid, pages[1:], encode)
        pool.execute(plan)
        alloc.commit(plan)
    g = torch.Generator().manual_seed(seed + 100)
    lq = T
    q, kn, vn = (torch.randn(lq, H, D, generator=g).bfloat16() for _ in range(3))
    hist = n_pages * T
    sc = StreamChunk(
        q, kn, vn, pool.read_plan(pages), torch.arange(hist), torch.arange(hist, hist + lq)
    )
    return sc, k, v


def _expected(sc, k, v, layer, fmt):
    kh, vh = k[layer], v[layer]  # [H, S, D]
    if fmt and kh.shape[1] > T:
        recon = []
        for half, x in enumerate((kh, vh)):
            enc = codec.encode(x[None, :, T:], SPECS[fmt], role="kv"[half], backend="reference")
            recon.append(torch.cat([x[:, :T], codec.decode(enc)[0]], 1))
        kh, vh = recon
    return dense(sc.q, kh.transpose(0, 1), vh.transpose(0, 1), sc.k, sc.v, sc.history_pos, sc.q_pos)


def _run(fmt, read_backend="auto"):
    pool, alloc = make_pool(gpu_pages=60)
    streams = [_stream(pool, alloc, sid, n, 10 * sid, fmt) for sid, n in ((1, 3), (2, 1), (3, 4))]
    pool.backend = read_backend  # after encoding: the fused read's backend (triton: interpreter)
    ws = Workspace(max_tokens=200, heads=H, head_dim=D, device="cpu")
    for layer in range(2):
        out = batch_attention(pool, layer, [s[0] for s in streams], ws)
        start = 0
        for sc, k, v in streams:
            want = _expected(sc, k, v, layer, fmt)
            torch.testing.assert_close(out[start : start + T], want, **tol("bf16"))
            start += T
    pool.check_invariants()


def test_bf16_pages_equal_dense_attention():
    _run(None)


def test_quantized_pages_equal_attention_over_codec_reconstruction():
    _run("qvg-int2")


def test_fused_triton_read_equals_dense_attention():
    _run("qvg-int2", read_backend="triton")


def test_workspace_bound_is_enforced():
    pool, alloc = make_pool()
    sc, _, _ = _stream(pool, alloc, 1, 3, 0, None)
    ws = Workspace(max_tokens=20, heads=H, head_dim=D, device="cpu")
    try:
        batch_attention(pool, 0, [sc], ws)
    except ValueError as exc:
        assert "workspace holds 20" in str(exc)
    else:
        raise AssertionError("a batch larger than the workspace must be refused")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_read_ahead_gives_the_serial_outputs_on_cuda():
    """Layer L + 1 read on the side stream while layer L attends: the same outputs, bit for
    bit, over layers with different K/V, mixed formats and a ragged batch; twice on the same
    workspace (a batch's read ahead never overlaps the next batch's reads)."""
    kv = kf.KVShape(layers=5, heads=H, head_dim=D, page_tokens=T)
    layout = pool_layout(kv, FORMATS, 80 * kf.page_bytes("bf16", kv), 0, SPECS)
    alloc = PageAllocator(layout)
    pool = KVPool(kv, alloc, "cuda", SPECS)
    g = torch.Generator().manual_seed(7)
    plans, hpos, qpos = [], [], []
    for sid, (n, fmt) in enumerate(((3, "qvg-int2"), (1, None), (5, "qvg-int4")), start=1):
        pages = alloc.allocate(sid, "bf16", n)
        shape = (kv.layers, H, n * T, D)
        pool.write_pages(pages, *(torch.randn(shape, generator=g).bfloat16() for _ in "kv"))
        if fmt:
            plan = alloc.begin_encode(sid, pages[1:], fmt)
            pool.execute(plan)
            alloc.commit(plan)
        plans.append(pool.read_plan(pages))
        hpos.append(torch.arange(n * T))
        qpos.append(torch.arange(n * T, n * T + T))
    qkv = [torch.randn(3, 3 * T, H, D, generator=g).bfloat16().cuda() for _ in range(kv.layers)]
    serial = Workspace(200, H, D, "cuda")
    ahead = Workspace(200, H, D, "cuda", read_ahead=True)
    assert ahead.reads_ahead and not serial.reads_ahead

    def outputs(ws):
        br = BatchRead(pool, ws, rope_1d, plans, hpos, qpos)
        return torch.stack([br.attend(layer, *qkv[layer]) for layer in range(kv.layers)])

    want = outputs(serial)
    for _ in range(2):
        assert torch.equal(outputs(ahead), want)
