"""Classifier-free guidance (engine and tiny sampler) and the trainer's text dropout."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from qvg_serve.engine import sampler
from qvg_serve.engine.config import EngineConfig
from qvg_serve.engine.engine import SHIFT, Engine
from qvg_serve.models import TINY, TINY_TEST, DenseContext, DenseKV, HashedWordEncoder, build_model
from qvg_serve.models.base import ChunkInput
from qvg_serve.tiny import evaluate, objective
from scheduler.config import SchedulerConfig

MC = dataclasses.replace(TINY_TEST, name="guidance-test", dim=128, heads=2, guidance=3.0)
MODEL = build_model(MC, "cpu", torch.float32, 0)


def text(i: int) -> torch.Tensor:
    return torch.randn(MC.text_len, MC.text_dim, generator=torch.Generator().manual_seed(i))


def engine_generate(model, seeds, chunks: int) -> list[torch.Tensor]:
    sc = SchedulerConfig(max_batch_tokens=4 * MC.chunk_tokens, sink_pages=1, window_pages=1)
    eng = Engine(model, EngineConfig(model=MC.name, kv_cache_memory_bytes=64 << 20), sc)
    sids = [eng.submit(text(s), chunks=chunks, seed=s)[0] for s in seeds]
    got = eng.run_until_idle()
    return [torch.cat([c.latents for c in got[sid]], 1) for sid in sids]


def dense_guided(seed: int, chunks: int, engine_like: bool = True) -> torch.Tensor:
    """The guided sampler written out over a dense cache: uncond = the empty prompt over the
    same history, flow = u + g (c - u). `engine_like`: bf16-rounded history and noise
    reseeded per chunk, as the engine; else fp32 history and one noise sequence, as
    `tiny.evaluate`."""
    shape = (MC.in_channels, MC.frames_per_chunk, MC.latent_height, MC.latent_width)
    noise, hist, out = sampler.StreamNoise(seed, shape), DenseKV.empty(MC.layers), []
    empty = torch.zeros(0, MC.text_dim)
    with torch.no_grad():
        for ch in range(chunks):
            start = ch * MC.frames_per_chunk
            if engine_like:
                noise.begin(ch)
            x = x0 = sampler.start(noise, "cpu", torch.float32)
            for i, t in enumerate(MC.timesteps):
                c_in, u_in = [ChunkInput(x, t, text(seed), start)], [ChunkInput(x, t, empty, start)]
                c = MODEL.forward(c_in, DenseContext(MODEL, [hist], c_in))[0]
                u = MODEL.forward(u_in, DenseContext(MODEL, [hist], u_in))[0]
                flow = u + MC.guidance * (c - u)
                nxt = MC.timesteps[i + 1] if i + 1 < len(MC.timesteps) else None
                x, x0 = sampler.step(x, flow, t, nxt, SHIFT, noise)
            inp = [ChunkInput(x0, 0.0, text(seed), start)]
            MODEL.forward(inp, DenseContext(MODEL, [hist], inp, commit=True))
            for layer in range(MC.layers if engine_like else 0):  # the pool holds bf16 K/V
                hist.k[layer] = hist.k[layer].bfloat16().float()
                hist.v[layer] = hist.v[layer].bfloat16().float()
            out.append(x0)
    return torch.cat(out, 1)


def test_engine_guidance_equals_the_guided_sampler_written_out():
    got = engine_generate(MODEL, [5, 6], 2)
    for seed, lat in zip([5, 6], got, strict=True):
        torch.testing.assert_close(lat, dense_guided(seed, 2), atol=2e-3, rtol=2e-3)


def test_guidance_one_is_the_plain_sampler_and_other_scales_differ():
    plain = build_model(dataclasses.replace(MC, guidance=1.0), "cpu", torch.float32, 0)
    a, g = engine_generate(plain, [5], 1)[0], engine_generate(MODEL, [5], 1)[0]
    assert (a - g).abs().max() > 1e-2  # guidance changes the chunk
    ev = evaluate.generate_batch(plain, [text(5)], 1, [5])[0]
    torch.testing.assert_close(ev, a, atol=2e-3, rtol=2e-3)


def test_evaluate_sampler_applies_the_same_guidance():
    ev = evaluate.generate_batch(MODEL, [text(5)], 2, [5])[0]
    torch.testing.assert_close(ev, dense_guided(5, 2, False), atol=2e-3, rtol=2e-3)


def test_guidance_below_one_is_refused():
    with pytest.raises(ValueError, match="guidance"):
        dataclasses.replace(MC, guidance=0.5)


def test_text_dropout_blanks_only_the_noisy_chunks(monkeypatch):
    model = build_model(dataclasses.replace(TINY, layers=1, dim=64, heads=1, ffn_dim=64), "cpu")
    enc = HashedWordEncoder(TINY.text_len, TINY.text_dim)
    batch = objective.make_batch(range(3), 2, "cpu", enc)
    seen = []
    real = type(model).forward

    def spy(self, chunks, ctx):
        seen.append([c.text.abs().sum().item() for c in chunks])
        return real(self, chunks, ctx)

    monkeypatch.setattr(type(model), "forward", spy)
    gen = torch.Generator().manual_seed(0)
    objective.flow_loss(model, batch, gen, text_dropout=1.0)
    per_clip = [seen[0][i * 3 : i * 3 + 3] for i in range(3)]  # [clean 0 | noisy 0, 1]
    assert all(clean > 0 and noisy == [0.0, 0.0] for clean, *noisy in per_clip)
    seen.clear()
    objective.flow_loss(model, batch, gen, text_dropout=0.0)
    assert all(v > 0 for v in seen[0])
