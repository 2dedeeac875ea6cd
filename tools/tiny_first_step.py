"""What the tiny model draws at its first denoising step (t = 1000), next to the target.

    python tools/tiny_first_step.py [--weights W] [--out docs]      # CPU, a few seconds

At t = 1000 the input is pure noise, so the model's clean estimate x - v is its guess of the
mean first frame for the caption (the regression optimum). One row per shape, "a yellow <shape>
moving left on grey": the mean of 40 rendered first frames of that caption (random size and
texture, the caption's fixed pose), then the model's estimate from three noise seeds. Writes
OUT/tiny_first_step.png (3x nearest-neighbour upscale).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qvg_serve.models import TINY, DenseContext, DenseKV, HashedWordEncoder  # noqa: E402
from qvg_serve.models.base import ChunkInput  # noqa: E402
from qvg_serve.models.pixel_ae import PixelAE  # noqa: E402
from qvg_serve.tiny import data, evaluate  # noqa: E402

MOTION, COLOUR, BACKGROUND = "moving left", "yellow", "grey"


def mean_first_frame(shape: str, n: int = 40) -> torch.Tensor:
    """uint8 [H, W, 3]: the mean frame 0 over n clips of the caption (sizes, textures from
    the first n shape-clip seeds)."""
    frames, seed = [], 0
    while len(frames) < n:
        spec = data.clip_spec(seed)
        seed += 1
        if spec.kind != "shape":
            continue
        params = list(spec.params)
        params[0], params[1], params[5] = data._shape_start(MOTION, params[4])
        spec = data.ClipSpec("shape", MOTION, BACKGROUND, shape, COLOUR, tuple(params))
        frames.append(data.render(spec, 1)[0].float())
    return torch.stack(frames).mean(0).round().to(torch.uint8)


@torch.no_grad()
def first_estimate(model, text: torch.Tensor, seed: int) -> torch.Tensor:
    """uint8 [H, W, 3]: frame 0 of the model's clean estimate at t = 1000 from seeded noise."""
    cfg = model.config
    shape = (cfg.in_channels, cfg.frames_per_chunk, cfg.latent_height, cfg.latent_width)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    inp = [ChunkInput(x, 1000.0, text, 0)]
    v = model(inp, DenseContext(model, [DenseKV.empty(cfg.layers)], inp))[0]
    return PixelAE().decode(x - v)[0]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python tools/tiny_first_step.py")
    p.add_argument("--weights", default=None, help="default: the shipped tiny weights")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out", default="docs")
    args = p.parse_args(argv)
    from PIL import Image

    model = evaluate.load_tiny(args.weights)
    enc = HashedWordEncoder(TINY.text_len, TINY.text_dim)
    rows = []
    for shape in data.SHAPES:
        text = enc.encode([f"a {COLOUR} {shape} {MOTION} on {BACKGROUND}"])[0]
        cells = [mean_first_frame(shape)]
        cells += [first_estimate(model, text, s) for s in range(args.seeds)]
        rows.append(torch.cat(cells, 1))
    img = torch.cat(rows, 0).numpy()
    out = Path(args.out) / "tiny_first_step.png"
    h, w = img.shape[:2]
    Image.fromarray(img).resize((w * 3, h * 3), Image.NEAREST).save(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
