"""Measure the tiny model: next-chunk prediction vs simple baselines, and long-video motion.

    python -m qvg_serve.tiny.evaluate --clips 48 --out docs

1. Next chunk: for held-out procedural clips (seeds no training run uses), the model gets
   `context` clean chunks (committed at t = 0, as the engine's commit pass does), generates
   the next chunk (4 steps, shift 5), and is scored by PSNR against the true chunk, next to
   "repeat the last frame" and "linear extrapolation of the last two frames".
2. Long videos: from captions alone, `long_frames` frames chunk by chunk with a dense
   (bf16-free, fp32) cache; mean absolute frame-to-frame difference per window, next to the
   true clips' (a static video scores 0).
Writes docs/tiny_samples.png, docs/tiny_sample.mp4 and prints/returns the numbers as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from qvg_serve.engine import sampler
from qvg_serve.engine.runtime import shipped_weights
from qvg_serve.models import (
    TINY,
    DenseContext,
    DenseKV,
    HashedWordEncoder,
    build_model,
    load_checkpoint,
    load_state_dict_file,
    weights_prediction,
)
from qvg_serve.models.base import ChunkInput
from qvg_serve.models.pixel_ae import PixelAE
from qvg_serve.tiny import data, fidelity
from qvg_serve.tiny.train import EVAL_SEED_BASE, SHIFT_T

PROMPTS = (
    "a red circle bouncing on black",
    "camera panning right over the astronaut",
    "a yellow star rotating on checkerboard",
    "a blue square moving left on gradient",
)
"""The samples' prompts: the first four of `qvg-serve demo` (what a new user sees first)."""


def load_tiny(path=None, device="cpu"):
    """The tiny model with weights from `path` (default: the shipped ones); a file with (or
    without) the text modulation's tensors gets a model with (or without) it, and the head
    its metadata says (`weights_prediction`: flow or x0)."""
    path = path or shipped_weights("tiny")
    has = any(k.startswith("text_modulation.") for k in load_state_dict_file(path))
    config = dataclasses.replace(TINY, text_modulation=has, prediction=weights_prediction(path))
    model = build_model(config, device, torch.float32)
    load_checkpoint(model, path)
    return model.eval().requires_grad_(False)


@torch.no_grad()
def generate_batch(model, texts, chunks: int, seeds, contexts=None) -> list[torch.Tensor]:
    """Latents [C, chunks * 3, h, w] per stream, all streams in one batch per forward: stream
    b's first chunks of `contexts[b]` [C, F, h, w] are committed as given (teacher forcing),
    the rest sampled with `model.config.timesteps` (each stream its own seeded noise)."""
    cfg, fpc = model.config, model.config.frames_per_chunk
    n = len(seeds)
    hists = [DenseKV.empty(cfg.layers) for _ in range(n)]
    shape = (cfg.in_channels, fpc, cfg.latent_height, cfg.latent_width)
    noises = [sampler.StreamNoise(seed, shape) for seed in seeds]
    given = [0 if contexts is None else c.shape[1] // fpc for c in contexts or [None] * n]
    out: list[list[torch.Tensor]] = [[] for _ in range(n)]
    for i in range(chunks):
        start = i * fpc
        x0s = [
            contexts[b][:, start : start + fpc].to(model.device) if i < given[b] else None
            for b in range(n)
        ]
        todo = [b for b in range(n) if x0s[b] is None]
        xs = {b: sampler.start(noises[b], model.device, torch.float32) for b in todo}
        steps = cfg.timesteps
        for j, t in enumerate(steps):
            if not todo:
                break
            batch = [ChunkInput(xs[b], t, texts[b], start) for b in todo]
            ctx = DenseContext(model, [hists[b] for b in todo], batch)
            flows = model(batch, ctx)
            if cfg.guidance != 1.0:  # as the engine (paged_context.run_batch)
                flows = sampler.guide(model, batch, flows, ctx, cfg.guidance)
            nxt = steps[j + 1] if j + 1 < len(steps) else None
            for b, flow in zip(todo, flows, strict=True):
                xs[b], x0s[b] = sampler.step(xs[b], flow, t, nxt, SHIFT_T, noises[b])
        batch = [ChunkInput(x0s[b], 0.0, texts[b], start) for b in range(n)]
        model(batch, DenseContext(model, hists, batch, commit=True))
        for b in range(n):
            out[b].append(x0s[b].cpu())
    return [torch.cat(o, 1) for o in out]


def generate(model, text, chunks: int, seed: int, context=None) -> torch.Tensor:
    """One stream of `generate_batch`."""
    return generate_batch(model, [text], chunks, [seed], None if context is None else [context])[0]


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.float() - b.float()).pow(2).mean().item()
    return 10 * torch.log10(torch.tensor(255.0**2 / max(mse, 1e-10))).item()


def next_chunk(model, clips: int, context: int, encoder) -> dict:
    """Mean PSNR (dB) of the next chunk: model vs repeat-last-frame vs linear extrapolation."""
    ae, fpc, scores = PixelAE(), TINY.frames_per_chunk, {"model": [], "repeat": [], "linear": []}
    clip_list = [data.clip(EVAL_SEED_BASE + i, (context + 1) * fpc) for i in range(clips)]
    texts = [encoder.encode([caption])[0].to(model.device) for _, caption in clip_list]
    pasts = [ae.encode(frames[: context * fpc]) for frames, _ in clip_list]
    lats = generate_batch(model, texts, context + 1, list(range(clips)), pasts)
    for (frames, _), lat in zip(clip_list, lats, strict=True):
        past, truth = frames[: context * fpc], frames[context * fpc :]
        pred = ae.decode(lat[:, context * fpc :])
        last, prev = past[-1].float(), past[-2].float()
        lin = torch.stack([last + (k + 1) * (last - prev) for k in range(fpc)])
        scores["model"].append(psnr(pred, truth))
        scores["repeat"].append(psnr(past[-1:].expand_as(truth), truth))
        scores["linear"].append(psnr(lin.clamp(0, 255).round(), truth))
    return {k: round(sum(v) / len(v), 2) for k, v in scores.items()}


def prompt_fidelity(model, encoder, n_shape: int, n_photo: int, frames: int) -> dict:
    """`fidelity` scores of videos generated from `frames` frames of each prompt (and of the
    true clips of the same prompts: what the scoring gets right on perfect videos)."""
    prompts = fidelity.prompts(n_shape, n_photo)
    scorer, ae = fidelity.Scorer(frames), PixelAE()
    texts = [encoder.encode([p.caption])[0].to(model.device) for p in prompts]
    chunks = -(-frames // TINY.frames_per_chunk)
    lats = generate_batch(model, texts, chunks, [2000 + i for i in range(len(prompts))])
    model_scores = [
        scorer.score(p, ae.decode(lat)[:frames]) for p, lat in zip(prompts, lats, strict=True)
    ]
    truth = [scorer.score(p, fidelity.true_video(p, frames)) for p in prompts]
    misses = [
        {"prompt": p.caption, **{k: v for k, v in s.items() if v is not True}}
        for p, s in zip(prompts, model_scores, strict=True)
        if not all(v is True or (k == "present" and v >= 0.9) for k, v in s.items())
    ]
    return {
        "model": fidelity.summarise(prompts, model_scores),
        "true_clips": fidelity.summarise(prompts, truth),
        "misses": misses,
    }


def motion(frames: torch.Tensor, window: int) -> list[float]:
    """Mean |frame_t - frame_{t-1}| (grey levels) per window of `window` frames."""
    diff = (frames[1:].float() - frames[:-1].float()).abs().mean(dim=(1, 2, 3))
    return [round(diff[i : i + window].mean().item(), 2) for i in range(0, len(diff), window)]


def long_videos(model, frames: int, encoder, window: int = 9) -> tuple[dict, list]:
    ae, out = PixelAE(), {}
    chunks = -(-frames // TINY.frames_per_chunk)
    texts = [encoder.encode([prompt])[0].to(model.device) for prompt in PROMPTS]
    lats = generate_batch(model, texts, chunks, [1000 + i for i in range(len(PROMPTS))])
    videos = [ae.decode(lat)[:frames] for lat in lats]
    for prompt, video in zip(PROMPTS, videos, strict=True):
        truth = data.render(_spec_for(prompt), frames)
        out[prompt] = {"model": motion(video, window), "data": motion(truth, window)}
    return out, videos


def _spec_for(prompt: str) -> data.ClipSpec:
    """A held-out clip whose caption is `prompt` (first matching eval seed)."""
    for s in range(EVAL_SEED_BASE, EVAL_SEED_BASE + 100_000):
        spec = data.clip_spec(s)
        if spec.caption == prompt:
            return spec
    raise ValueError(f"no clip with caption {prompt!r}")


def write_media(videos: list, out: Path, fps: float = 8.0) -> None:
    from PIL import Image

    from qvg_serve.serve.video import write_mp4

    strip = torch.cat([torch.cat(list(v[::10][:8]), 1) for v in videos], 0)
    Image.fromarray(strip.numpy()).save(out / "tiny_samples.png")
    try:
        import av  # noqa: F401  (write_mp4's encoder; absent on a bare GPU host)
    except ImportError:
        print("PyAV missing: tiny_sample.mp4 not written", flush=True)
        return
    top, bottom = torch.cat(videos[:2], 2), torch.cat(videos[2:4], 2)
    write_mp4(torch.cat([top, bottom], 1), out / "tiny_sample.mp4", fps=fps)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m qvg_serve.tiny.evaluate")
    p.add_argument("--weights", default=None)
    p.add_argument("--clips", type=int, default=48)
    p.add_argument("--context", type=int, default=3, help="clean context chunks")
    p.add_argument("--long-frames", type=int, default=81)
    p.add_argument("--shape-prompts", type=int, default=40, help="shape prompts scored")
    p.add_argument("--photo-prompts", type=int, default=10, help="photo prompts scored")
    p.add_argument("--fidelity-frames", type=int, default=48, help="frames per scored video")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="docs")
    p.add_argument(
        "--timesteps",
        default=None,
        help="comma-separated sampler timesteps to try instead of the preset's (a variant)",
    )
    p.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="classifier-free guidance scale to try instead of the preset's (a variant)",
    )
    args = p.parse_args(argv)
    torch.manual_seed(0)
    model = load_tiny(args.weights, args.device)
    if args.guidance is not None:
        model.config = dataclasses.replace(model.config, guidance=args.guidance)
    if args.timesteps:
        steps = tuple(float(x) for x in args.timesteps.split(","))
        model.config = dataclasses.replace(model.config, timesteps=steps)
    encoder = HashedWordEncoder(TINY.text_len, TINY.text_dim)
    t0 = time.time()
    result = {
        "fidelity": prompt_fidelity(
            model, encoder, args.shape_prompts, args.photo_prompts, args.fidelity_frames
        )
    }
    result["timesteps"] = list(model.config.timesteps)
    result["guidance"] = model.config.guidance
    result["fidelity_seconds"] = round(time.time() - t0, 1)
    print(json.dumps(result["fidelity"], indent=1), flush=True)
    t0 = time.time()
    result["next_chunk_psnr_db"] = next_chunk(model, args.clips, args.context, encoder)
    result["next_chunk_seconds"] = round(time.time() - t0, 1)
    t0 = time.time()
    result["motion"], videos = long_videos(model, args.long_frames, encoder)
    result["long_seconds"] = round(time.time() - t0, 1)
    Path(args.out).mkdir(parents=True, exist_ok=True)  # a new directory is fine
    write_media(videos, Path(args.out))
    print(json.dumps(result, indent=1))
    (Path(args.out) / "tiny_eval.json").write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
