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
)
from qvg_serve.models.base import ChunkInput
from qvg_serve.models.pixel_ae import PixelAE
from qvg_serve.tiny import data
from qvg_serve.tiny.train import EVAL_SEED_BASE, SHIFT_T

PROMPTS = (
    "a red star moving right on black",
    "a yellow circle bouncing on gradient",
    "camera panning left over the astronaut",
    "a cyan square orbiting on checkerboard",
)


def load_tiny(path=None, device="cpu"):
    model = build_model(TINY, device, torch.float32)
    load_checkpoint(model, path or shipped_weights("tiny"))
    return model.eval().requires_grad_(False)


@torch.no_grad()
def generate(model, text, chunks: int, seed: int, context=None) -> torch.Tensor:
    """Latents [C, chunks * 3, h, w]: the first chunks of `context` [C, F, h, w] are committed
    as given (teacher forcing), the rest sampled with `model.config.timesteps`."""
    cfg, fpc = model.config, model.config.frames_per_chunk
    hist, out = DenseKV.empty(cfg.layers), []
    shape = (cfg.in_channels, fpc, cfg.latent_height, cfg.latent_width)
    noise = sampler.StreamNoise(seed, shape)
    given = 0 if context is None else context.shape[1] // fpc
    for i in range(chunks):
        start = i * fpc
        if i < given:
            x0 = context[:, start : start + fpc]
        else:
            x = sampler.start(noise, model.device, torch.float32)
            steps = cfg.timesteps
            for j, t in enumerate(steps):
                chunk = [ChunkInput(x, t, text, start)]
                flow = model(chunk, DenseContext(model, [hist], chunk))[0]
                nxt = steps[j + 1] if j + 1 < len(steps) else None
                x, x0 = sampler.step(x, flow, t, nxt, SHIFT_T, noise)
        chunk = [ChunkInput(x0, 0.0, text, start)]
        model(chunk, DenseContext(model, [hist], chunk, commit=True))
        out.append(x0)
    return torch.cat(out, 1)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.float() - b.float()).pow(2).mean().item()
    return 10 * torch.log10(torch.tensor(255.0**2 / max(mse, 1e-10))).item()


def next_chunk(model, clips: int, context: int, encoder) -> dict:
    """Mean PSNR (dB) of the next chunk: model vs repeat-last-frame vs linear extrapolation."""
    ae, fpc, scores = PixelAE(), TINY.frames_per_chunk, {"model": [], "repeat": [], "linear": []}
    for i in range(clips):
        frames, caption = data.clip(EVAL_SEED_BASE + i, (context + 1) * fpc)
        past, truth = frames[: context * fpc], frames[context * fpc :]
        lat = generate(model, encoder.encode([caption])[0], context + 1, i, ae.encode(past))
        pred = ae.decode(lat[:, context * fpc :])
        last, prev = past[-1].float(), past[-2].float()
        lin = torch.stack([last + (k + 1) * (last - prev) for k in range(fpc)])
        scores["model"].append(psnr(pred, truth))
        scores["repeat"].append(psnr(past[-1:].expand_as(truth), truth))
        scores["linear"].append(psnr(lin.clamp(0, 255).round(), truth))
    return {k: round(sum(v) / len(v), 2) for k, v in scores.items()}


def motion(frames: torch.Tensor, window: int) -> list[float]:
    """Mean |frame_t - frame_{t-1}| (grey levels) per window of `window` frames."""
    diff = (frames[1:].float() - frames[:-1].float()).abs().mean(dim=(1, 2, 3))
    return [round(diff[i : i + window].mean().item(), 2) for i in range(0, len(diff), window)]


def long_videos(model, frames: int, encoder, window: int = 9) -> tuple[dict, list]:
    ae, videos, out = PixelAE(), [], {}
    chunks = -(-frames // TINY.frames_per_chunk)
    for i, prompt in enumerate(PROMPTS):
        lat = generate(model, encoder.encode([prompt])[0], chunks, 1000 + i)
        video = ae.decode(lat)[:frames]
        videos.append(video)
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
    top, bottom = torch.cat(videos[:2], 2), torch.cat(videos[2:4], 2)
    write_mp4(torch.cat([top, bottom], 1), out / "tiny_sample.mp4", fps=fps)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m qvg_serve.tiny.evaluate")
    p.add_argument("--weights", default=None)
    p.add_argument("--clips", type=int, default=48)
    p.add_argument("--context", type=int, default=3, help="clean context chunks")
    p.add_argument("--long-frames", type=int, default=81)
    p.add_argument("--out", default="docs")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    model, encoder = load_tiny(args.weights), HashedWordEncoder(TINY.text_len, TINY.text_dim)
    t0 = time.time()
    result = {"next_chunk_psnr_db": next_chunk(model, args.clips, args.context, encoder)}
    result["next_chunk_seconds"] = round(time.time() - t0, 1)
    t0 = time.time()
    result["motion"], videos = long_videos(model, args.long_frames, encoder)
    result["long_seconds"] = round(time.time() - t0, 1)
    write_media(videos, Path(args.out))
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
