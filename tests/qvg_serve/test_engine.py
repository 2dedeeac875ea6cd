"""The engine: batching and paging equivalence, quantized pages within a bound, cancel."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from qvg_serve.engine import sampler
from qvg_serve.engine.config import EngineConfig
from qvg_serve.engine.engine import SHIFT, Engine
from qvg_serve.models import TINY_TEST, DenseContext, DenseKV, build_model
from qvg_serve.models.base import ChunkInput
from scheduler.config import SchedulerConfig

# head_dim 64 so QVG groups fit; 5 x 7 = 35 tokens per frame (not a power of two)
MC = dataclasses.replace(TINY_TEST, name="engine-test", dim=128, heads=2)
MODEL = build_model(MC, "cpu", torch.float32, 0)
BIG = 64 << 20  # no memory pressure: every page stays bf16


def text(i: int) -> torch.Tensor:
    return torch.randn(MC.text_len, MC.text_dim, generator=torch.Generator().manual_seed(i))


def engine(budget=BIG, **sched) -> Engine:
    sc = SchedulerConfig(
        max_batch_tokens=4 * MC.chunk_tokens, sink_pages=1, window_pages=1, **sched
    )
    cfg = EngineConfig(model=MC.name, kv_cache_memory_bytes=budget, centroids=16)
    return Engine(MODEL, cfg, sc)


def latents(got: dict, sid: int) -> torch.Tensor:
    return torch.cat([c.latents for c in got[sid]], 1)


def alone(seed: int, chunks: int) -> torch.Tensor:
    eng = engine()
    sid, adm = eng.submit(text(seed), chunks=chunks, seed=seed)
    assert adm.accepted
    return latents(eng.run_until_idle(), sid)


def test_batched_streams_equal_each_stream_alone():
    eng = engine()
    a, _ = eng.submit(text(1), chunks=3, seed=1)
    first = eng.step().chunks + eng.step().chunks  # b starts two steps later: a and b
    assert first == ()  # sit at different denoising steps
    b, _ = eng.submit(text(2), chunks=2, seed=2)
    c, _ = eng.submit(text(3), chunks=1, seed=3)
    chunks = eng.run_until_idle()
    got = {s: latents(chunks, s) for s in (a, b, c)}
    for sid, seed, chunks in ((a, 1, 3), (b, 2, 2), (c, 3, 1)):
        assert got[sid].shape[1] == chunks * MC.frames_per_chunk
        torch.testing.assert_close(got[sid], alone(seed, chunks), atol=1e-4, rtol=1e-4)


class RoundedKV(DenseKV):
    """A dense history holding what the pool holds: bf16 K/V."""

    def append(self, layer, k, v):
        super().append(layer, k.bfloat16().float(), v.bfloat16().float())


def dense_generate(seed: int, chunks: int) -> torch.Tensor:
    """The same sampler over a plain contiguous cache (DenseContext), no pool."""
    shape = (MC.in_channels, MC.frames_per_chunk, MC.latent_height, MC.latent_width)
    noise = sampler.StreamNoise(seed, shape)
    hist = RoundedKV.empty(MC.layers)
    hist.__class__ = RoundedKV
    out, steps = [], MC.timesteps
    with torch.no_grad():
        for ch in range(chunks):
            start = ch * MC.frames_per_chunk
            noise.begin(ch)
            x = sampler.start(noise, "cpu", torch.float32)
            x0 = x
            for i, t in enumerate(steps):
                inp = [ChunkInput(x, t, text(seed), start)]
                flow = MODEL.forward(inp, DenseContext(MODEL, [hist], inp))[0]
                t_next = steps[i + 1] if i + 1 < len(steps) else None
                x, x0 = sampler.step(x, flow, t, t_next, SHIFT, noise)
            inp = [ChunkInput(x0, 0.0, text(seed), start)]
            MODEL.forward(inp, DenseContext(MODEL, [hist], inp, commit=True))
            out.append(x0)
    return torch.cat(out, 1)


def test_paged_generation_equals_dense_cache_generation():
    torch.testing.assert_close(alone(5, 3), dense_generate(5, 3), atol=1e-4, rtol=1e-4)


def test_quantized_pages_stay_within_a_stated_bound():
    """Early watermarks make the ladder encode committed pages (rung 1, qvg-int4) and re-encode
    them (rung 2, qvg-int2) while the stream runs. The video then differs from the bf16-cache
    video, but little: this random tiny model measures ~3e-4 relative L2; the bound is 1e-2."""
    ref = alone(7, 4)
    page = 2 * MC.layers * MC.tokens_per_frame * MC.dim * 2
    eng = engine(
        budget=16 * page,
        high_watermark=0.5,
        low_watermark=0.3,
        rungs=frozenset({"encode", "reencode"}),
        encode_policy="pressure",  # rung 1 (INT4) then rung 2 (INT2), as the docstring says
    )
    sid, _ = eng.submit(text(7), chunks=4, seed=7)
    chunks = eng.run_until_idle()
    counters = eng.kv_stats().ladder
    assert counters.get("encode", 0) > 0 and counters.get("reencode", 0) > 0, counters
    got = latents(chunks, sid)
    rel = float((got - ref).norm() / ref.norm())
    assert 0 < rel < 1e-2, rel


def test_cancel_frees_pages_at_once():
    eng = engine()
    sid, _ = eng.submit(text(1), chunks=5, seed=1)
    for _ in range(4):
        eng.step()
    assert eng.alloc.pages_of(sid)
    res = eng.cancel(sid)
    assert res.live and res.pages_held == 0
    assert eng.alloc.pages_of(sid) == ()
    eng.check_invariants()
    assert eng.busy()  # until the next step reports the end
    report = eng.step()
    assert report.ended == ((sid, "cancelled"),) and report.chunks == ()
    assert not eng.busy() and sid not in eng.streams
    assert not eng.cancel(sid).live  # a second cancel is a no-op


def test_natural_end_is_reported_once_and_releases_state():
    eng = engine()
    sid, _ = eng.submit(text(2), chunks=2, seed=2)
    ends, chunks = [], 0
    while eng.busy():
        report = eng.step()
        eng.check_invariants()
        ends.extend(report.ended)
        chunks += len(report.chunks)
    assert ends == [(sid, "completed")] and chunks == 2
    assert eng.streams == {} and eng.pool._last_span == {}
    assert eng.snapshot(sid)["state"] == "finished"
    assert not eng.set_text(sid, text(3))


def test_freed_pages_are_forgotten():
    """Pages the scheduler frees (dropped history, ended streams) leave the page->frame map."""
    eng = engine()
    a, _ = eng.submit(text(1), chunks=3, seed=1)
    b, _ = eng.submit(text(2), chunks=1, seed=2)

    def held() -> set[int]:
        return {p for s in eng.live_streams() for p in eng.alloc.pages_of(s)}

    stale: set[int] = set()
    while eng.busy():
        eng.step()
        # pages freed by a step's update() are reported (and forgotten) by the next step
        now = set(eng._page_frame) - held()
        assert not now & stale, now & stale
        stale = now
    assert eng._page_frame == {}


def test_bad_text_shape_is_refused():
    eng = engine()
    with pytest.raises(ValueError, match="text embeddings"):
        eng.submit(torch.zeros(3, 3))


def test_tight_arena_eager_ladder_loses_nothing():
    """Four 5-chunk streams in an arena of 0.45x their BF16 history (their history fits at
    INT2 with sink + window BF16): eager encoding, commit reservations and projected admission
    finish every stream with no drop and no preempt; BF16-only paging in the same arena drops."""
    page = 2 * MC.layers * MC.tokens_per_frame * MC.dim * 2
    need = 4 * 5 * MC.frames_per_chunk * page

    def run(**sched):
        eng = engine(budget=int(0.45 * need), max_batch_streams=4, **sched)
        ids = [eng.submit(text(i), chunks=5, seed=i)[0] for i in range(4)]
        ends: dict[int, str] = {}
        while eng.busy():
            ends.update(eng.step().ended)
            eng.check_invariants()
        return ids, ends, eng.kv_stats().ladder

    ids, ends, ladder = run()
    assert ends == {sid: "completed" for sid in ids}
    assert ladder.get("drop", 0) == 0 and ladder.get("preempt", 0) == 0, ladder
    assert ladder.get("encode", 0) > 0, ladder
    _, _, bf16 = run(
        rungs=frozenset({"offload", "drop", "preempt", "refuse"}), encode_policy="pressure"
    )
    assert bf16.get("drop", 0) + bf16.get("preempt", 0) > 0, bf16  # the pressure is real


def test_plan_failures_retry_only_out_of_memory(monkeypatch):
    """A plan that runs out of device memory is retried later; any other failure is a bug that
    would repeat every step (streams stalled, nothing said): it propagates from step()."""
    page = 2 * MC.layers * MC.tokens_per_frame * MC.dim * 2
    eng = engine(budget=int(0.45 * 2 * 5 * MC.frames_per_chunk * page), max_batch_streams=2)
    for i in range(2):
        eng.submit(text(i), chunks=5, seed=i)
    real, calls = eng.pool.execute, []

    def oom_once(plan, **kw):
        calls.append(plan.id)
        if len(calls) == 1:
            raise torch.OutOfMemoryError("injected")
        real(plan, **kw)

    monkeypatch.setattr(eng.pool, "execute", oom_once)
    ends: dict[int, str] = {}
    while eng.busy():
        ends.update(eng.step().ended)
        eng.check_invariants()
    assert len(calls) > 1 and set(ends.values()) == {"completed"}
    assert eng.kv_stats().ladder.get("drop", 0) == 0

    eng = engine(budget=int(0.45 * 2 * 5 * MC.frames_per_chunk * page), max_batch_streams=2)
    for i in range(2):
        eng.submit(text(i), chunks=5, seed=i)

    def broken(plan, **kw):
        raise ValueError("injected bug")

    monkeypatch.setattr(eng.pool, "execute", broken)
    with pytest.raises(ValueError, match="injected bug"):
        for _ in range(200):
            eng.step()


@pytest.mark.gpu
def test_encodes_beside_the_forward_equal_encodes_after_it():
    """On CUDA a step's span encodes run on a side stream beside the forward (orders.py). In a
    tight arena (many encodes, pages freed by them reused at once) every stream's latents match
    the one-stream order's, and the ladder makes the same moves."""
    model = build_model(MC, "cuda", torch.float32, 0)
    page = 2 * MC.layers * MC.tokens_per_frame * MC.dim * 2
    need = 4 * 5 * MC.frames_per_chunk * page

    def run(overlap: bool):
        sc = SchedulerConfig(max_batch_tokens=4 * MC.chunk_tokens, sink_pages=1, window_pages=1,
                             max_batch_streams=4)  # fmt: skip
        cfg = EngineConfig(model=MC.name, kv_cache_memory_bytes=int(0.45 * need), centroids=16,
                           overlap_encodes=overlap)  # fmt: skip
        eng = Engine(model, cfg, sc, device="cuda")
        assert (eng.orders.side is not None) == overlap
        ids = [eng.submit(text(i), chunks=5, seed=i)[0] for i in range(4)]
        got = eng.run_until_idle()
        eng.check_invariants()
        return [latents(got, sid) for sid in ids], eng.kv_stats().ladder

    side, ladder_side = run(True)
    one, ladder_one = run(False)
    assert ladder_side == ladder_one and ladder_side.get("encode", 0) > 0, ladder_side
    for a, b in zip(side, one, strict=True):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)
