"""Resuming a stream from its committed latents (another replica died or drained): the noise of
chunk k is a function of (seed, k), and the recompute pass rebuilds the cache."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import tol

from qvg_serve.engine import ResumeState, sampler
from qvg_serve.engine.config import EngineConfig
from qvg_serve.engine.engine import Engine
from qvg_serve.models import TINY_TEST, build_model
from scheduler.config import SchedulerConfig

MC = dataclasses.replace(TINY_TEST, name="resume-test", dim=128, heads=2)
MODEL = build_model(MC, "cpu", torch.float32, 0)
FPC = MC.frames_per_chunk


def text(i: int) -> torch.Tensor:
    return torch.randn(MC.text_len, MC.text_dim, generator=torch.Generator().manual_seed(i))


def engine(sink: int = 3, window: int = 3, batch_chunks: int = 8) -> Engine:
    sc = SchedulerConfig(
        max_batch_tokens=batch_chunks * MC.chunk_tokens, sink_pages=sink, window_pages=window
    )
    return Engine(MODEL, EngineConfig(model=MC.name, kv_cache_memory_bytes=64 << 20), sc)


def run(eng: Engine, seed: int, chunks: int, resume: ResumeState | None = None) -> torch.Tensor:
    sid, adm = eng.submit(text(seed), chunks=chunks, seed=seed, resume=resume)
    assert adm.accepted, adm
    got = eng.run_until_idle()[sid]
    first = 0 if resume is None else resume.chunks_done
    assert [c.index for c in got] == list(range(first, chunks))
    eng.check_invariants()
    return torch.cat([c.latents for c in got], 1)


def test_chunk_noise_is_a_function_of_seed_and_chunk():
    shape = (2, 3)
    a, b = sampler.StreamNoise(9, shape), sampler.StreamNoise(9, shape)
    for k in range(3):  # a draws every chunk, b only chunk 2
        a.begin(k)
        first, second = a.draw("cpu", torch.float32), a.draw("cpu", torch.float32)
    b.begin(2)
    assert torch.equal(b.draw("cpu", torch.float32), first)
    assert torch.equal(b.draw("cpu", torch.float32), second)
    assert sampler.chunk_seed(9, 0) == 9 and sampler.chunk_seed(9, 1) != sampler.chunk_seed(10, 1)
    assert 0 <= sampler.chunk_seed(2**62, 7) < 2**63


def test_resume_after_one_chunk_equals_the_uninterrupted_stream():
    """Chunk 0 alone rebuilt in one pass is exactly its own commit pass: fp32 equality."""
    ref = run(engine(), 4, 4)
    got = run(engine(), 4, 4, ResumeState(ref[:, :FPC], 1))
    torch.testing.assert_close(got, ref[:, FPC:], **tol("fp32"))


def test_resume_later_stays_close_and_keeps_the_seed():
    """Resumed at chunk 2 the recompute rebuilds both chunks in one pass (each frame then
    sees the whole rebuilt history, not only its past): close to the uninterrupted video,
    far closer than another seed's continuation of the same history."""
    ref = run(engine(), 5, 4)
    got = run(engine(), 5, 4, ResumeState(ref[:, : 2 * FPC], 2))
    other = run(engine(), 6, 4, ResumeState(ref[:, : 2 * FPC], 2))
    tail = ref[:, 2 * FPC :]
    rel = float((got - tail).norm() / tail.norm())
    rel_other = float((other - tail).norm() / tail.norm())
    assert rel < 0.1 and rel < rel_other / 5, (rel, rel_other)


def test_resume_rebuilds_the_whole_history_when_one_pass_holds_it():
    """Beyond sink + window, but within one recompute pass: every page comes back, no loss."""
    eng = engine(sink=1, window=1)
    ref = run(engine(sink=1, window=1), 3, 4)
    sid, _ = eng.submit(text(3), chunks=4, seed=3, resume=ResumeState(ref[:, : 3 * FPC], 3))
    snap = eng.snapshot(sid)
    assert not snap["degraded"], snap
    restore = next(h for h in snap["history"] if h["event"] == "restore")
    assert f"rebuild {3 * FPC} pages" in restore["detail"], restore
    eng.run_until_idle()
    eng.check_invariants()


def test_resume_beyond_one_pass_is_marked_degraded():
    """A history one recompute pass cannot hold comes back as sink + window: degraded."""
    eng = engine(sink=1, window=1, batch_chunks=1)
    ref = run(engine(sink=1, window=1), 3, 4)
    sid, _ = eng.submit(text(3), chunks=4, seed=3, resume=ResumeState(ref[:, : 3 * FPC], 3))
    snap = eng.snapshot(sid)
    assert snap["degraded"] and snap["history"][0]["event"] == "restore"
    eng.run_until_idle()
    eng.check_invariants()


def test_bad_resume_is_refused_naming_the_field():
    eng = engine()
    with pytest.raises(ValueError, match="resume.latents"):
        eng.submit(text(1), chunks=3, resume=ResumeState(torch.zeros(1, 2, 3, 4), 1))
    lat = torch.zeros(MC.in_channels, 3 * FPC, MC.latent_height, MC.latent_width)
    with pytest.raises(ValueError, match="resume_chunks"):
        eng.submit(text(1), chunks=3, resume=ResumeState(lat, 3))
