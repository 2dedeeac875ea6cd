"""Check the prompt-fidelity scorer (`fidelity.Scorer`) on ground-truth clips.

    python -m qvg_serve.tiny.fidelity_check --frames 48 --per-motion 10

The model's fidelity numbers mean something only if the scorer gets rendered clips right
(accuracy near 1 with each clip's own prompt) and calls them wrong when the prompt names
another shape, motion or photo (near 0 with those labels shifted by one): a label-order,
coordinate or layout mix-up shows as one or the other. The clips come from held-out seeds
with random sizes, speeds, textures, colours and backgrounds (not the prompts' canonical
clips) and pass through the latent layout (PixelAE encode, decode) as generated videos do.
"""

from __future__ import annotations

import argparse
import json
import time

from qvg_serve.models.pixel_ae import PixelAE
from qvg_serve.tiny import data, fidelity

HELD_OUT_SEED = 9_300_000_000_000
"""No training, evaluation or classifier clip uses seeds near this one."""


def held_out_clips(per_motion: int, per_camera: int, seed: int = HELD_OUT_SEED):
    """`per_motion` shape clips of each shape motion, then `per_camera` photo clips of each
    camera motion: the first such seeds after `seed`."""
    want = {("shape", m): per_motion for m in data.SHAPE_MOTIONS}
    want.update({("photo", m): per_camera for m in data.CAMERA_MOTIONS})
    shapes, photos = [], []
    while any(want.values()):
        seed += 1
        spec = data.clip_spec(seed)
        if want.get((spec.kind, spec.motion), 0) > 0:
            want[(spec.kind, spec.motion)] -= 1
            (shapes if spec.kind == "shape" else photos).append(spec)
    return shapes + photos


def _next(values, value, shift: int):
    values = list(values)
    return values[(values.index(value) + shift) % len(values)]


def prompt_for(spec: data.ClipSpec, shift: int = 0) -> fidelity.Prompt:
    """The clip's own prompt, or (shift != 0) one naming another shape, motion and photo
    (same colour and background: the segmentation is unchanged)."""
    motion = _next(
        data.SHAPE_MOTIONS if spec.kind == "shape" else data.CAMERA_MOTIONS, spec.motion, shift
    )
    if spec.kind == "photo":
        return fidelity.Prompt("photo", motion, _next(data.PHOTOS.values(), spec.background, shift))
    shape = _next(data.SHAPES, spec.shape, shift)
    return fidelity.Prompt("shape", motion, spec.background, shape, spec.colour)


def check(scorer: fidelity.Scorer, specs) -> dict:
    """Scores of each clip with its own prompt ("true") and with shifted labels ("shifted"):
    per-clip score dicts and their `fidelity.summarise` accuracies."""
    ae, true, shifted = PixelAE(), [], []
    for spec in specs:
        video = ae.decode(ae.encode(data.render(spec, scorer.frames)))
        true.append(scorer.score(prompt_for(spec), video))
        shifted.append(scorer.score(prompt_for(spec, 1), video))
    prompts = [prompt_for(s) for s in specs]
    return {
        "true": fidelity.summarise(prompts, true),
        "shifted": fidelity.summarise(prompts, shifted),
        "scores": {"true": true, "shifted": shifted},
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m qvg_serve.tiny.fidelity_check")
    p.add_argument("--frames", type=int, default=48, help="frames per clip (as evaluate)")
    p.add_argument("--per-motion", type=int, default=10, help="shape clips per shape motion")
    p.add_argument("--per-camera", type=int, default=5, help="photo clips per camera motion")
    args = p.parse_args(argv)
    t0 = time.time()
    scorer = fidelity.Scorer(args.frames)
    out = check(scorer, held_out_clips(args.per_motion, args.per_camera))
    out.pop("scores")
    out["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
