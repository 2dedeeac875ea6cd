"""Prompt fidelity of generated videos, scored with the data generator's own knowledge.

For a shape prompt ("a red star bouncing on black") each frame is segmented by the prompted
colour (a pixel matches when it is within `COLOUR_TOLERANCE` of the colour at some shade in
[0.8, 1.05], the renderer's texture shading range, and not within `BACKGROUND_TOLERANCE` of
the prompted background image there), and scored on:

    present      the prompted colour covers >= 0.5 % of the frame (per frame)
    colour       of the 8 colours, the prompted one matches the most pixels (pixels that
                 look like the prompted background image are not counted, for any colour)
    shape        a logistic-regression classifier on rotation-invariant boundary features
                 (harmonics of the object's radius around its centroid), trained here on
                 rendered clips (seeded: the same classifier on every run); majority vote
    motion       a logistic-regression classifier on the centroid track (velocity, spread,
                 angular speed about the orbit centre, ...), trained on rendered clips
    background   nearest of the 4 background images over the non-object pixels (vote)

A photo prompt ("camera panning left over the cat") is matched against rendered clips of
every (photo, camera motion) pair from frame 0 at 3 speeds: the nearest (mean squared error
over 16 x 24 thumbnails, frame by frame) names the photo and the camera motion.

`Scorer.truth_check` runs the same scoring on the true clips of the same prompts: what the
scoring itself gets right on perfect videos.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from qvg_serve.tiny import data

COLOUR_TOLERANCE = 0.25
BACKGROUND_TOLERANCE = 0.15
PRESENT_FRACTION = 0.005
TRAIN_SEED = 7_000_000_000_000
"""Seeds of the rendered clips the classifiers learn from (no training or eval run uses them)."""


@dataclass(frozen=True)
class Prompt:
    kind: str
    motion: str
    background: str
    shape: str | None = None
    colour: str | None = None

    @property
    def caption(self) -> str:
        return data.ClipSpec(
            self.kind, self.motion, self.background, self.shape, self.colour
        ).caption


def prompts(n_shape: int, n_photo: int) -> list[Prompt]:
    """A spread over the vocabulary: prompt i takes value i mod n of every attribute (every
    colour, shape, motion, background, photo and camera motion appears near-equally often)."""
    colours, photos = list(data.COLOURS), list(data.PHOTOS.values())
    out = [
        Prompt(
            "shape",
            data.SHAPE_MOTIONS[i % len(data.SHAPE_MOTIONS)],
            data.BACKGROUNDS[i % len(data.BACKGROUNDS)],
            data.SHAPES[i % len(data.SHAPES)],
            colours[i % len(colours)],
        )
        for i in range(n_shape)
    ]
    cams = data.CAMERA_MOTIONS
    return out + [
        Prompt("photo", cams[i % len(cams)], photos[i % len(photos)]) for i in range(n_photo)
    ]


def colour_match(frames: torch.Tensor, colour: str, background: str | None = None) -> torch.Tensor:
    """uint8 [F, H, W, 3] -> bool [F, H, W]: pixels of `colour` at a shade in [0.8, 1.05];
    with `background`, not those within BACKGROUND_TOLERANCE of that background image (the
    gradient's corner is purple-ish)."""
    return colour_matches(frames, [colour], background)[0]


def colour_matches(frames: torch.Tensor, colours, background: str | None = None) -> torch.Tensor:
    """`colour_match` for several colours at once -> bool [len(colours), F, H, W] (the frames
    are converted and the background compared once: the colour vote scores all 8)."""
    p = frames.float() / 255
    far = None
    if background is not None:
        bg = data.background(background, "cpu").permute(1, 2, 0)
        far = (p - bg).pow(2).sum(-1) > BACKGROUND_TOLERANCE**2
    out = []
    for colour in colours:
        c = torch.tensor(data.COLOURS[colour])
        s = ((p @ c) / c.pow(2).sum()).clamp(0.8, 1.05)
        match = (p - s[..., None] * c).pow(2).sum(-1) < COLOUR_TOLERANCE**2
        out.append(match if far is None else match & far)
    return torch.stack(out)


def shape_features(mask: torch.Tensor, bins: int = 48) -> torch.Tensor | None:
    """Harmonics 1..8 of the boundary radius (from the area of angular sectors about the
    centroid), over the mean radius: rotation-invariant. None when the object is too small
    or touches the frame's edge (cut off)."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    if ys.numel() < 60 or ys.min() == 0 or xs.min() == 0:
        return None
    if ys.max() == mask.shape[0] - 1 or xs.max() == mask.shape[1] - 1:
        return None
    dy, dx = ys.float() - ys.float().mean(), xs.float() - xs.float().mean()
    sector = ((torch.atan2(dy, dx) + math.pi) / (2 * math.pi) * bins).long().clamp(max=bins - 1)
    area = torch.zeros(bins).index_add_(0, sector, torch.ones_like(dy))
    radius = torch.sqrt(2 * area * bins / (2 * math.pi))
    spectrum = torch.fft.rfft(radius).abs()
    return spectrum[1:9] / spectrum[0].clamp(min=1e-6)


def centroid_track(present: torch.Tensor, match: torch.Tensor) -> torch.Tensor:
    """(x, y) per frame [F, 2]; NaN where the object is absent."""
    out = torch.full((match.shape[0], 2), float("nan"))
    for f in range(match.shape[0]):
        if present[f]:
            ys, xs = torch.nonzero(match[f], as_tuple=True)
            out[f] = torch.stack([xs.float().mean(), ys.float().mean()])
    return out


def motion_features(track: torch.Tensor) -> torch.Tensor:
    """Centroid track [F, 2] -> 10 numbers: mean and spread of the velocity (jumps > 12 px,
    a wrap round the frame, dropped), position range, vertical acceleration, angular speed
    about the orbit centre."""
    ok = ~torch.isnan(track[:, 0])
    pts = track[ok]
    if pts.shape[0] < 4:
        return torch.zeros(10)
    v = pts[1:] - pts[:-1]
    v = v[v.norm(dim=1) < 12]
    if v.shape[0] < 2:
        return torch.zeros(10)
    acc = (v[1:, 1] - v[:-1, 1]).abs().mean()
    ang = torch.atan2(pts[:, 1] - 32, (pts[:, 0] - 48) * 16 / 26)
    dang = torch.remainder(ang[1:] - ang[:-1] + math.pi, 2 * math.pi) - math.pi
    spread = pts.max(0).values - pts.min(0).values
    return torch.cat(
        [
            v.mean(0),
            v.std(0),
            spread / 10,
            acc[None],
            dang.mean()[None] * 10,
            dang.abs().mean()[None] * 10,
            v.norm(dim=1).mean()[None],
        ]
    )


class LogReg:
    """Multinomial logistic regression on standardised features (LBFGS, deterministic)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, classes: int) -> None:
        self.mean, self.std = x.mean(0), x.std(0).clamp(min=1e-6)
        z = (x - self.mean) / self.std
        self.w = torch.zeros(z.shape[1], classes, requires_grad=True)
        self.b = torch.zeros(classes, requires_grad=True)
        opt = torch.optim.LBFGS([self.w, self.b], max_iter=300, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(z @ self.w + self.b, y) + 1e-3 * self.w.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        self.w, self.b = self.w.detach(), self.b.detach()

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return (((x - self.mean) / self.std) @ self.w + self.b).argmax(-1)


class Scorer:
    """Classifiers fitted on rendered clips (`clips_per_class` per class, seeded)."""

    def __init__(self, frames: int = 48, clips_per_class: int = 12) -> None:
        self.frames = frames
        gen = torch.Generator().manual_seed(TRAIN_SEED)
        shape_x, shape_y, motion_x, motion_y = [], [], [], []
        for k in range(clips_per_class * len(data.SHAPE_MOTIONS)):
            spec = _random_shape_spec(gen, k)
            video = data.render(spec, frames)
            match = colour_match(video, spec.colour, spec.background)
            for f in range(0, frames, 6):
                feats = shape_features(match[f])
                if feats is not None:
                    shape_x.append(feats)
                    shape_y.append(data.SHAPES.index(spec.shape))
            present = match.float().mean((1, 2)) >= PRESENT_FRACTION
            motion_x.append(motion_features(centroid_track(present, match)))
            motion_y.append(data.SHAPE_MOTIONS.index(spec.motion))
        self.shape = LogReg(torch.stack(shape_x), torch.tensor(shape_y), len(data.SHAPES))
        self.motion = LogReg(torch.stack(motion_x), torch.tensor(motion_y), len(data.SHAPE_MOTIONS))
        self.backgrounds = torch.stack(
            [data.background(b, "cpu").permute(1, 2, 0) for b in data.BACKGROUNDS]
        )
        self.photo_bank = _photo_bank(frames)

    def score(self, prompt: Prompt, video: torch.Tensor) -> dict:
        """Per-attribute hits (bool) for one generated video uint8 [F, H, W, 3]."""
        if prompt.kind == "photo":
            thumbs = _thumbs(video)
            dist = ((self.photo_bank[1] - thumbs[None]) ** 2).mean((1, 2, 3, 4))
            photo, motion = self.photo_bank[0][int(dist.argmin())]
            return {"photo": photo == prompt.background, "camera": motion == prompt.motion}
        match = colour_match(video, prompt.colour, prompt.background)
        present = match.float().mean((1, 2)) >= PRESENT_FRACTION
        feats = [f for f in (shape_features(match[i]) for i in range(len(match))) if f is not None]
        shape_votes = self.shape.predict(torch.stack(feats)) if feats else torch.tensor([-1])
        shape = data.SHAPES[int(shape_votes.mode().values)] if feats else None
        motion = data.SHAPE_MOTIONS[
            int(self.motion.predict(motion_features(centroid_track(present, match))[None]))
        ]
        return {
            "present": present.float().mean().item(),
            "colour": self._colour(video, prompt) == prompt.colour,
            "shape": shape == prompt.shape,
            "motion": motion == prompt.motion,
            "background": self._background(video, match) == prompt.background,
        }

    def _colour(self, video: torch.Tensor, prompt: Prompt) -> str:
        share = colour_matches(video, data.COLOURS, prompt.background).float().mean((1, 2, 3))
        return list(data.COLOURS)[int(share.argmax())]

    def _background(self, video: torch.Tensor, match: torch.Tensor) -> str:
        near = F.max_pool2d(match.float()[:, None], 7, 1, 3)[:, 0] > 0  # object + 3 px
        keep = (~near).float()[..., None]
        err = ((video.float()[None] / 255 - self.backgrounds[:, None]) ** 2 * keep[None]).sum(
            (1, 2, 3, 4)
        )
        return data.BACKGROUNDS[int(err.argmin())]


def _random_shape_spec(gen: torch.Generator, k: int) -> data.ClipSpec:
    """A shape clip of the data's distribution with motion k mod 7 (balanced classes)."""
    while True:
        spec = data.clip_spec(TRAIN_SEED + int(torch.randint(2**40, (), generator=gen)))
        if spec.kind == "shape" and spec.motion == data.SHAPE_MOTIONS[k % len(data.SHAPE_MOTIONS)]:
            return spec


def _thumbs(video: torch.Tensor) -> torch.Tensor:
    """uint8 [F, H, W, 3] -> float [F, 3, 16, 24]."""
    return F.interpolate(video.permute(0, 3, 1, 2).float() / 255, size=(16, 24), mode="area")


def _photo_bank(frames: int):
    """(labels [(photo, motion)], thumbnails [N, F, 3, 16, 24]) of every photo clip from
    frame 0 at speeds 1.0, 1.2, 1.4."""
    labels, thumbs = [], []
    for word in data.PHOTOS.values():
        for motion in data.CAMERA_MOTIONS:
            for speed in (1.0, 1.2, 1.4):
                spec = data.ClipSpec("photo", motion, word, params=data.photo_start(motion, speed))
                labels.append((word, motion))
                thumbs.append(_thumbs(data.render(spec, frames)))
    return labels, torch.stack(thumbs)


def true_video(prompt: Prompt, frames: int) -> torch.Tensor:
    """A rendered clip of `prompt` from frame 0 (first matching held-out seed)."""
    for s in range(TRAIN_SEED // 2, TRAIN_SEED // 2 + 1_000_000):
        spec = data.clip_spec(s)
        if spec.caption == prompt.caption:
            return data.render(spec, frames)
    raise ValueError(f"no clip with caption {prompt.caption!r}")


def summarise(prompts_: list[Prompt], scores: list[dict]) -> dict:
    """Accuracy per attribute, object-present rate and the share of shape prompts whose
    object is present in >= 90 % of frames."""
    out: dict = {}
    keys = ("colour", "shape", "motion", "background", "photo", "camera")
    for key in keys:
        hits = [s[key] for s in scores if key in s]
        if hits:
            out[key] = round(sum(hits) / len(hits), 3)
    present = [s["present"] for s in scores if "present" in s]
    if present:
        out["present_frames"] = round(sum(present) / len(present), 3)
        out["prompts_present_90"] = round(sum(p >= 0.9 for p in present) / len(present), 3)
    out["prompts"] = {
        "shape": sum(p.kind == "shape" for p in prompts_),
        "photo": sum(p.kind == "photo" for p in prompts_),
    }
    return out
