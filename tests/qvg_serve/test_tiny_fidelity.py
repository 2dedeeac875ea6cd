"""The prompt-fidelity scorer (`qvg_serve.tiny.fidelity`) on ground-truth clips.

What `python -m qvg_serve.tiny.evaluate` reports for the model means something only if the
scorer gets rendered clips right, and calls them wrong when the prompt names another shape,
motion or photo (a label-order or coordinate mix-up would show as one or the other)."""

from __future__ import annotations

import pytest

from qvg_serve.models.pixel_ae import PixelAE
from qvg_serve.tiny import data, fidelity

FRAMES = 24
SEED = 9_300_000_000_000
"""Held out: no training, evaluation or classifier clip uses seeds near it."""


def _clips(kind: str, attr: str, values, per_value: int) -> list[data.ClipSpec]:
    """The first `per_value` clips of `kind` with each value of `attr`, from SEED on (random
    sizes, speeds, colours, backgrounds: not the prompts' canonical clips)."""
    want = {v: per_value for v in values}
    out, seed = [], SEED
    while any(want.values()):
        seed += 1
        spec = data.clip_spec(seed)
        if spec.kind == kind and want.get(getattr(spec, attr), 0) > 0:
            want[getattr(spec, attr)] -= 1
            out.append(spec)
    return out


def _prompt(spec: data.ClipSpec, shift: int = 0) -> fidelity.Prompt:
    """The clip's own prompt, or (shift > 0) one naming the next shape, motion and photo."""
    if spec.kind == "photo":
        photos = list(data.PHOTOS.values())
        photo = photos[(photos.index(spec.background) + shift) % len(photos)]
        motions = data.CAMERA_MOTIONS
        motion = motions[(motions.index(spec.motion) + shift) % len(motions)]
        return fidelity.Prompt("photo", motion, photo)
    shape = data.SHAPES[(data.SHAPES.index(spec.shape) + shift) % len(data.SHAPES)]
    motions = data.SHAPE_MOTIONS
    motion = motions[(motions.index(spec.motion) + shift) % len(motions)]
    return fidelity.Prompt("shape", motion, spec.background, shape, spec.colour)


@pytest.fixture(scope="module")
def scored():
    """(scores with the true prompts, scores with shifted prompts) of 14 shape clips (2 per
    motion) and 6 photo clips (1 per camera motion)."""
    scorer = fidelity.Scorer(frames=FRAMES, clips_per_class=6)
    specs = _clips("shape", "motion", data.SHAPE_MOTIONS, 2)
    specs += _clips("photo", "motion", data.CAMERA_MOTIONS, 1)
    ae = PixelAE()  # through the latent layout, as generated videos reach the scorer
    videos = [ae.decode(ae.encode(data.render(s, FRAMES))) for s in specs]
    true = [scorer.score(_prompt(s), v) for s, v in zip(specs, videos, strict=True)]
    wrong = [scorer.score(_prompt(s, 1), v) for s, v in zip(specs, videos, strict=True)]
    return true, wrong


def _accuracy(scores: list[dict], key: str) -> float:
    hits = [float(s[key]) for s in scores if key in s]
    assert hits, key
    return sum(hits) / len(hits)


@pytest.mark.parametrize(
    "key", ["present", "colour", "shape", "motion", "background", "photo", "camera"]
)
def test_scorer_gets_ground_truth_clips_right(scored, key):
    true, _ = scored
    assert _accuracy(true, key) >= 0.9, [s for s in true if key in s]


@pytest.mark.parametrize("key", ["shape", "motion", "photo", "camera"])
def test_scorer_rejects_prompts_naming_another_shape_motion_or_photo(scored, key):
    _, wrong = scored
    assert _accuracy(wrong, key) <= 0.2, [s for s in wrong if key in s]
