"""The prompt-fidelity scorer (`qvg_serve.tiny.fidelity`) on ground-truth clips.

What `python -m qvg_serve.tiny.evaluate` reports for the model means something only if the
scorer gets rendered clips right, and calls them wrong when the prompt names another shape,
motion or photo (a label-order or coordinate mix-up would show as one or the other)."""

from __future__ import annotations

import pytest

from qvg_serve.tiny import data, fidelity, fidelity_check


@pytest.fixture(scope="module")
def checked():
    """14 held-out shape clips (2 per motion) and 6 photo clips (1 per camera motion),
    24 frames, scored with their own and with shifted prompts."""
    scorer = fidelity.Scorer(frames=24, clips_per_class=6)
    return fidelity_check.check(scorer, fidelity_check.held_out_clips(2, 1))


def test_held_out_clips_cover_every_motion_and_are_not_canonical():
    specs = fidelity_check.held_out_clips(2, 1)
    assert {s.motion for s in specs if s.kind == "shape"} == set(data.SHAPE_MOTIONS)
    assert {s.motion for s in specs if s.kind == "photo"} == set(data.CAMERA_MOTIONS)
    assert len({s.params[4] for s in specs if s.kind == "shape"}) == 14  # random radii


@pytest.mark.parametrize(
    "key", ["present_frames", "colour", "shape", "motion", "background", "photo", "camera"]
)
def test_scorer_gets_ground_truth_clips_right(checked, key):
    assert checked["true"][key] >= 0.9, (checked["true"], checked["scores"]["true"])


@pytest.mark.parametrize("key", ["shape", "motion", "photo", "camera"])
def test_scorer_rejects_prompts_naming_another_shape_motion_or_photo(checked, key):
    assert checked["shifted"][key] <= 0.2, (checked["shifted"], checked["scores"]["shifted"])


def test_shifted_prompt_names_other_values_with_the_same_colour_and_background():
    for spec in fidelity_check.held_out_clips(1, 1):
        own, other = fidelity_check.prompt_for(spec), fidelity_check.prompt_for(spec, 1)
        assert own.caption == spec.caption and other.motion != own.motion
        if spec.kind == "shape":
            assert other.shape != own.shape
            assert (other.colour, other.background) == (own.colour, own.background)
        else:
            assert other.background != own.background  # the photo
