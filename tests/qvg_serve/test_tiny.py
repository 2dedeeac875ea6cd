"""The tiny model's data, fixed autoencoder, trainer smoke mode and shipped weights (CPU)."""

from __future__ import annotations

import pytest
import torch

from qvg_serve.engine.runtime import shipped_weights
from qvg_serve.models import TINY, build_model, load_checkpoint
from qvg_serve.models.pixel_ae import PixelAE
from qvg_serve.tiny import data, train


def test_clips_are_deterministic_per_seed_and_differ_between_seeds():
    a, cap_a = data.clip(123, 6)
    b, cap_b = data.clip(123, 6)
    c, _ = data.clip(124, 6)
    assert cap_a == cap_b and torch.equal(a, b)
    assert a.shape == (6, data.HEIGHT, data.WIDTH, 3) and a.dtype == torch.uint8
    assert not torch.equal(a, c)


def _shape_seed(colour: str, motion: str, background: str = "black") -> int:
    for s in range(20_000):
        spec = data.clip_spec(s)
        if (spec.colour, spec.motion, spec.background) == (colour, motion, background):
            return s
    raise AssertionError("no such clip in the first seeds")


@pytest.mark.parametrize("colour", ["red", "green", "blue"])
def test_caption_colour_matches_object_pixels(colour):
    seed = _shape_seed(colour, "rotating")
    frames, caption = data.clip(seed, 3)
    assert colour in caption.split()
    obj = frames.float().reshape(-1, 3)
    obj = obj[obj.sum(1) > 60]  # pixels brighter than the black background
    dominant = obj.mean(0).argmax().item()
    assert dominant == {"red": 0, "green": 1, "blue": 2}[colour]


@pytest.mark.parametrize(
    "motion,axis,sign",
    [("moving right", 1, 1), ("moving left", 1, -1), ("moving down", 0, 1), ("moving up", 0, -1)],
)
def test_caption_motion_matches_object_centroid(motion, axis, sign):
    spec = data.clip_spec(_shape_seed("white", motion))
    spec = data.ClipSpec(
        spec.kind,
        spec.motion,
        spec.background,
        spec.shape,
        spec.colour,
        (48.0, 32.0, *spec.params[2:]),
    )  # start centred: no wrap in 6 frames (vertical speed 0.6-0.8 px per frame)
    frames = data.render(spec, 6).float().sum(-1)
    mask = frames > 100
    coords = [torch.nonzero(m).float().mean(0)[axis].item() for m in mask]
    assert sign * (coords[-1] - coords[0]) > 2


@pytest.mark.parametrize("motion", data.SHAPE_MOTIONS)
def test_first_frame_is_fixed_by_the_caption(motion):
    """Clips of one caption differ only in size, speed and texture at frame 0 (what the
    model learns to draw from the caption alone): their object centroids agree."""
    centroids = []
    for s in range(3000):
        spec = data.clip_spec(s)
        if (spec.motion, spec.colour, spec.background) == (motion, "white", "black"):
            mask = data.render(spec, 1)[0].float().sum(-1) > 300
            centroids.append(torch.nonzero(mask).float().mean(0))
        if len(centroids) == 3:
            break
    assert len(centroids) == 3
    spread = torch.stack(centroids).std(0).max().item()
    assert spread < 2.0, (motion, centroids)


def test_photo_clip_caption_names_a_bundled_photo_and_moves():
    seed = next(s for s in range(1000) if data.clip_spec(s).kind == "photo")
    frames, caption = data.clip(seed, 4)
    assert caption.split()[-1] in data.PHOTOS.values()
    assert (frames[1:].float() - frames[:-1].float()).abs().mean() > 0.5


def test_pixel_ae_round_trip_is_exact_and_latents_have_unit_scale():
    ae = PixelAE()
    frames = torch.cat([data.clip(s, 3)[0] for s in range(6)])
    lat = ae.encode(frames)
    assert lat.shape == (TINY.in_channels, 18, TINY.latent_height, TINY.latent_width)
    assert torch.equal(ae.decode(lat), frames)
    all_levels = torch.arange(256, dtype=torch.uint8).repeat(64 * 96 * 3 // 256)
    ramp = all_levels.reshape(1, 64, 96, 3)
    assert torch.equal(ae.decode(ae.encode(ramp)), ramp)
    assert abs(lat.mean().item()) < 0.5 and 0.5 < lat.std().item() < 1.5


def test_train_smoke_mode_lowers_the_loss_on_a_fixed_batch(tmp_path):
    log = train.main(["--smoke", "--out", str(tmp_path), "--device", "cpu"])
    losses = [loss for _, _, loss, _ in log["loss_curve"]]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    weights = tmp_path / "tiny.safetensors"
    model = build_model(TINY)
    load_checkpoint(model, weights)  # the trainer's output loads into the preset
    assert weights.stat().st_size <= 16 * 2**20


def test_shipped_weights_load_into_the_tiny_preset():
    path = shipped_weights("tiny")
    if path is None:
        pytest.skip(
            "qvg_serve/weights/tiny.safetensors absent (train: python -m qvg_serve.tiny.train)"
        )
    assert path.stat().st_size <= 16 * 2**20
    model = build_model(TINY)
    before = model.head.head.weight.clone()
    load_checkpoint(model, path)
    assert not torch.equal(before, model.head.head.weight)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_fidelity_scorer_passes_true_clips_and_fails_an_empty_video():
    from qvg_serve.tiny import fidelity

    scorer = fidelity.Scorer(frames=6, clips_per_class=1)
    prompts = fidelity.prompts(4, 2)
    for p in prompts:
        score = scorer.score(p, fidelity.true_video(p, 6))
        if p.kind == "shape":
            assert score["present"] == 1.0 and score["colour"] and score["background"], score
        else:
            assert score["photo"], (p.caption, score)
    blank = torch.full((6, data.HEIGHT, data.WIDTH, 3), 10, dtype=torch.uint8)
    score = scorer.score(prompts[0], blank)
    assert score["present"] == 0.0 and not score["shape"]


def test_a_fine_tune_adding_the_text_modulation_starts_as_the_old_model(tmp_path):
    """`--init` from weights without the text modulation: its tensors start at their zero
    output, so the model computes what the old one did; and the caption then changes the
    timestep embedding once the last layer is non-zero."""
    from safetensors.torch import save_file

    from qvg_serve.models.base import ChunkInput
    from qvg_serve.tiny.contexts import BlockCausalContext
    from qvg_serve.tiny.evaluate import load_tiny

    old = train.new_model(1, "cpu", train.model_config(False))
    torch.nn.init.normal_(old.head.head.weight, std=0.02)  # a non-trivial old model
    path = tmp_path / "old.safetensors"
    save_file({k: v.contiguous() for k, v in old.state_dict().items()}, str(path))
    new = train.new_model(2, "cpu", train.model_config(True))
    train.init_from(new, path)
    assert not any(k.startswith("text_modulation") for k in old.state_dict())
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(TINY.in_channels, 3, TINY.latent_height, TINY.latent_width, generator=gen)
    text = torch.randn(5, TINY.text_dim, generator=gen)
    chunk = [ChunkInput(x, 500.0, text, 0)]
    with torch.no_grad():
        want = old(chunk, BlockCausalContext(old, 1))[0]
        assert torch.equal(new(chunk, BlockCausalContext(new, 1))[0], want)
        torch.nn.init.normal_(new.text_modulation[2].weight, std=0.1)
        assert not torch.allclose(new(chunk, BlockCausalContext(new, 1))[0], want)
    # evaluate's loader picks the config the file was trained with
    assert load_tiny(path).config.text_modulation is False
    assert load_tiny().config.text_modulation is TINY.text_modulation


def test_batched_rendering_equals_clip_by_clip_rendering():
    """`data.render_batch` and the trainer's batched `make_batch`: bit for bit what `render`
    gives clip by clip, for shape and photo clips of every motion, from frame 0 and later."""
    from qvg_serve.models import HashedWordEncoder
    from qvg_serve.tiny.batch_render import render_batch
    from qvg_serve.tiny.objective import make_batch

    seeds = range(3000, 3120)
    specs = [data.clip_spec(s) for s in seeds]
    assert {s.motion for s in specs} == set(data.SHAPE_MOTIONS) | set(data.CAMERA_MOTIONS)
    starts = [0 if s % 3 else s % 151 for s in seeds]
    frames, cover = render_batch(specs, 5, starts)
    for i, (spec, start) in enumerate(zip(specs, starts, strict=True)):
        want, want_cover = data.render(spec, 5, start, alpha=True)
        assert torch.equal(frames[i], want), spec.caption
        assert torch.equal(cover[i], want_cover), spec.caption
    encoder = HashedWordEncoder(TINY.text_len, TINY.text_dim)
    got = make_batch(range(40, 56), 2, "cpu", encoder)
    for a, b in zip(got, make_batch(range(40, 56), 2, "cpu", encoder, batched=False), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="2 specs but 1 starts"):
        render_batch(specs[:2], 3, [0])


def test_an_x0_head_returns_the_flow_whose_clean_estimate_is_its_output(tmp_path):
    """`prediction="x0"`: forward returns (x_t - head) / sigma, so the sampler's x_t - sigma *
    flow is the head's output at every sampler step; the trainer's weights file says so
    and every loader reads it (the engine refuses a file for the other head)."""
    from qvg_serve.engine.config import EngineConfig
    from qvg_serve.engine.engine import SHIFT
    from qvg_serve.engine.runtime import load_runtime
    from qvg_serve.engine.sampler import sigma
    from qvg_serve.models import weights_prediction
    from qvg_serve.models.base import ChunkInput
    from qvg_serve.tiny.contexts import BlockCausalContext
    from qvg_serve.tiny.evaluate import load_tiny
    from qvg_serve.tiny.objective import SHIFT_T

    assert SHIFT == SHIFT_T == TINY.shift  # the x0 head's sigma is the sampler's
    flow_model = train.new_model(1, "cpu", train.model_config(True, "flow"))
    torch.nn.init.normal_(flow_model.head.head.weight, std=0.02)
    x0_model = train.new_model(1, "cpu", train.model_config(True, "x0"))
    x0_model.load_state_dict(flow_model.state_dict())
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(TINY.in_channels, 3, TINY.latent_height, TINY.latent_width, generator=gen)
    text = torch.randn(5, TINY.text_dim, generator=gen)
    with torch.no_grad():
        for t in TINY.timesteps:
            chunk = [ChunkInput(x, t, text, 0)]
            head = flow_model(chunk, BlockCausalContext(flow_model, 1))[0]  # same weights
            flow = x0_model(chunk, BlockCausalContext(x0_model, 1))[0]
            s = sigma(t, SHIFT_T)
            torch.testing.assert_close(x - s * flow, head, atol=1e-5, rtol=1e-5)
            assert not torch.allclose(flow, head)
        commit = x0_model([ChunkInput(x, 0.0, text, 0)], BlockCausalContext(x0_model, 1))[0]
        assert torch.isfinite(commit).all()  # sigma 0: floored, not a division by zero
    with pytest.raises(ValueError, match="prediction must be one of"):
        train.model_config(True, "eps")
    for name, want in (("flow", "flow"), ("x0", "x0")):
        path = tmp_path / f"{name}.safetensors"
        train.save_weights(x0_model.state_dict(), path, prediction=name)
        assert weights_prediction(path) == want
        assert load_tiny(path).config.prediction == want
    assert weights_prediction(shipped_weights("tiny")) == TINY.prediction
    other = "x0" if TINY.prediction == "flow" else "flow"
    with pytest.raises(ValueError, match=f"predict '{other}' but model 'tiny'"):
        load_runtime(EngineConfig(model="tiny", weights=str(tmp_path / f"{other}.safetensors")))


def test_an_x0_head_trains_on_the_flow_loss_with_its_low_noise_weight_capped():
    """flow_loss on an x0 head: a chunk at sigma < X0_LOSS_SIGMA weighs its x0 error as at
    X0_LOSS_SIGMA (x 25), not by 1 / sigma^2 (x 117 at t = 20); t = 0.5 (sigma 0.0025,
    under the flow's floor) stays finite."""
    from qvg_serve.models import HashedWordEncoder
    from qvg_serve.tiny.objective import X0_LOSS_SIGMA, flow_loss, make_batch

    model = train.new_model(3, "cpu", train.model_config(True, "x0"))
    batch = make_batch(range(2), 1, "cpu", HashedWordEncoder(TINY.text_len, TINY.text_dim), True)
    losses = {}
    for t in (0.5, 20.0, 1000.0):  # sigma 0.0025, 0.093, 1: a zero head's x0 error is x0
        loss, _ = flow_loss(model, batch, torch.Generator().manual_seed(0), p_table=1.0,
                            table=[t])  # fmt: skip
        losses[t] = loss.item()
    assert all(v == v and v < 1e6 for v in losses.values())
    ratio = losses[20.0] / losses[1000.0]
    assert ratio == pytest.approx(1 / X0_LOSS_SIGMA**2, rel=0.02)  # capped: 25, not 117


def test_own_rollout_context_replaces_the_leading_chunks_of_frame_0_clips_only():
    """`own_chunks`: the first N context chunks of the picked frame-0 clips become the model's
    own rollout; later chunks and clips that start later keep the true latents. A one-chunk
    rollout over the dense history is the first-chunk sample (same noise, same model)."""
    from qvg_serve.models import HashedWordEncoder
    from qvg_serve.tiny.objective import sample_chunks, sample_first_chunk, with_own_first_chunk

    model = train.new_model(4, "cpu", train.model_config(True, "x0"))
    torch.nn.init.normal_(model.head.head.weight, std=0.02)
    enc = HashedWordEncoder(TINY.text_len, TINY.text_dim)
    text = enc.encode(["a red circle moving left on black", "a blue star bouncing on grey"])
    one = sample_chunks(model, text, 1, torch.Generator().manual_seed(5))[:, 0]
    first = sample_first_chunk(model, text, torch.Generator().manual_seed(5))
    torch.testing.assert_close(one, first, atol=1e-4, rtol=1e-4)
    shape = (3, 4, TINY.in_channels, 3, TINY.latent_height, TINY.latent_width)
    ctx = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    texts = enc.encode(["a red circle moving left on black"] * 3)
    starts = torch.tensor([0, 7, 0])
    got = with_own_first_chunk(model, ctx, texts, starts, 1.0, torch.Generator(), chunks=2)
    for b in (0, 2):
        assert not torch.equal(got[b, :2], ctx[b, :2])
        assert torch.equal(got[b, 2:], ctx[b, 2:])
    assert torch.equal(got[1], ctx[1])  # starts at frame 7: its context stays the truth
    with pytest.raises(SystemExit):
        train.parse(["--own-chunks", "6", "--chunks", "6"])


def test_self_context_redraws_the_picked_clips_context_close_to_the_truth():
    """`self_denoised_context` with the shipped weights: the picked clips' first K - 1 chunks
    become the model's x0 estimate of the true chunk from t = 250 / 500 (much closer to the
    truth than the noised input it started from, and not the truth itself); the last chunk
    and the clips not picked keep their latents."""
    from qvg_serve.models import HashedWordEncoder
    from qvg_serve.tiny.evaluate import load_tiny
    from qvg_serve.tiny.objective import make_batch, self_denoised_context

    model = load_tiny()
    enc = HashedWordEncoder(TINY.text_len, TINY.text_dim)
    latents, text, _, _ = make_batch(range(6), 3, "cpu", enc)
    b, fpc = latents.shape[0], TINY.frames_per_chunk
    x0 = latents.unflatten(2, (3, fpc)).permute(0, 2, 1, 3, 4, 5)
    cpu_gen = torch.Generator().manual_seed(1)
    got = self_denoised_context(model, x0, text, 0.5, torch.Generator().manual_seed(2), cpu_gen)
    changed = [not torch.equal(got[i], x0[i]) for i in range(b)]
    assert any(changed) and not all(changed)
    for i in range(b):
        assert torch.equal(got[i, 2], x0[i, 2])  # the last chunk is never context
        if changed[i]:
            err = (got[i, :2] - x0[i, :2]).pow(2).mean().item()
            # the input was x0 noised to sigma >= 0.63: its squared error is at least
            # 0.63^2 * E[(noise - x0)^2]; the model's estimate from it is far closer
            noised = 0.63**2 * (1 + x0[i, :2].pow(2).mean().item())
            assert 1e-4 < err < 0.3 * noised, (err, noised)  # measured 0.015-0.19
    assert torch.equal(self_denoised_context(model, x0, text, 0.0, torch.Generator(), cpu_gen), x0)
