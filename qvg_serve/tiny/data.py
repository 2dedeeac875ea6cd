"""Procedural video clips with captions: the tiny model's training and evaluation data.

Two kinds of clip, 64 x 96 RGB, any length (motion is defined for all t, so clips of any
length exist and long generations can be compared against a continuation):

    shape clip   "a red star bouncing on checkerboard"
                 one textured shape (circle, square, triangle, star, hexagon) in a colour,
                 slowly spinning, moving left/right/up/down (wrapping round the frame),
                 bouncing (gravity + walls), orbiting, or rotating in place; over a black,
                 grey, gradient or checkerboard background.
    photo clip   "camera panning left over the cat"
                 a camera panning (left/right/up/down) or zooming (in/out, ping-pong) over a
                 photograph bundled with scikit-image (no download).

Every random choice comes from a CPU `torch.Generator` seeded per clip (`clip_spec(seed)`),
so a seed names one clip on every machine; rendering is vectorised over frames with torch
and runs on any device (the trainer renders its batches on the GPU).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

HEIGHT, WIDTH = 64, 96
SHAPES = ("circle", "square", "triangle", "star", "hexagon")
COLOURS = {
    "red": (0.9, 0.15, 0.1),
    "green": (0.15, 0.8, 0.2),
    "blue": (0.15, 0.3, 0.95),
    "yellow": (0.95, 0.85, 0.1),
    "white": (0.95, 0.95, 0.95),
    "orange": (0.95, 0.5, 0.05),
    "purple": (0.6, 0.2, 0.85),
    "cyan": (0.1, 0.85, 0.9),
}
SHAPE_MOTIONS = (
    "moving left",
    "moving right",
    "moving up",
    "moving down",
    "bouncing",
    "orbiting",
    "rotating",
)
BACKGROUNDS = ("black", "grey", "gradient", "checkerboard")
PHOTOS = {
    "astronaut": "astronaut",
    "coffee": "coffee",
    "chelsea": "cat",
    "rocket": "rocket",
    "hubble_deep_field": "galaxy",
}
"""scikit-image function -> the word captions use."""
CAMERA_MOTIONS = (
    "panning left",
    "panning right",
    "panning up",
    "panning down",
    "zooming in",
    "zooming out",
)
PHOTO_FRACTION = 0.35
"""Share of photo clips (the rest are shape clips)."""


@dataclass(frozen=True)
class ClipSpec:
    """Everything random about one clip (shape-clip fields are None for photo clips)."""

    kind: str  # "shape" or "photo"
    motion: str
    background: str  # a BACKGROUNDS entry, or the photo's caption word
    shape: str | None = None
    colour: str | None = None
    params: tuple[float, ...] = ()  # kind-specific numbers (positions, speeds, phases)

    @property
    def caption(self) -> str:
        if self.kind == "shape":
            return f"a {self.colour} {self.shape} {self.motion} on {self.background}"
        return f"camera {self.motion} over the {self.background}"


def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * torch.rand((), generator=gen).item()


def _pick(gen: torch.Generator, options) -> str:
    options = list(options)
    return options[int(torch.randint(len(options), (), generator=gen))]


def clip_spec(seed: int) -> ClipSpec:
    """The clip named by `seed`. Where a clip starts (frame 0) is fixed by its caption (see
    `_shape_start`, `photo_start`); only sizes, speeds and textures are random."""
    gen = torch.Generator().manual_seed(seed)
    if torch.rand((), generator=gen).item() < PHOTO_FRACTION:
        photo, motion = _pick(gen, PHOTOS), _pick(gen, CAMERA_MOTIONS)
        speed = _uniform(gen, 1.0, 1.4)  # photo px (of 288) per frame
        return ClipSpec("photo", motion, PHOTOS[photo], params=photo_start(motion, speed))
    shape, colour = _pick(gen, SHAPES), _pick(gen, COLOURS)
    motion, background = _pick(gen, SHAPE_MOTIONS), _pick(gen, BACKGROUNDS)
    vertical = motion in ("moving up", "moving down")
    speed = _uniform(gen, 0.6, 0.8) if vertical else _uniform(gen, 1.0, 1.4)
    spin, r = _uniform(gen, 0.03, 0.08), _uniform(gen, 14, 18)
    stripes, tex_angle = _uniform(gen, 2, 5), _uniform(gen, 0, math.pi)
    x0, y0, phase = _shape_start(motion, r)
    return ClipSpec(
        "shape",
        motion,
        background,
        shape,
        colour,
        (x0, y0, speed, spin, r, phase, stripes, tex_angle),
    )


def _shape_start(motion: str, r: float) -> tuple[float, float, float]:
    """(x0, y0, phase) at frame 0: one pose per motion, so what a caption's first frames show
    is (nearly) determined by the caption. The tiny model is trained by regression (MSE) and
    sampled with a few-step sampler that re-noises its clean estimate: where the first chunk
    could be anywhere, the model learns the average over positions, which is a faint smear."""
    return {
        "moving left": (74.0, 32.0, 0.0),
        "moving right": (22.0, 32.0, 0.0),
        "moving up": (48.0, 44.0, 0.0),
        "moving down": (48.0, 20.0, 0.0),
        "bouncing": (72.0, r + 6.0, math.pi),  # at the top of a bounce, drifting left
        "orbiting": (48.0, 32.0, 0.0),  # on the orbit's right end
        "rotating": (48.0, 32.0, 0.0),
    }[motion]


def photo_start(motion: str, speed: float) -> tuple[float, ...]:
    """(cx, cy, speed, zoom phase, zoom scale): pans start near the edge they move away
    from, zooms at the photo's centre (wide for "in", close for "out")."""
    cx, cy = {
        "panning left": (0.725, 0.5),
        "panning right": (0.275, 0.5),
        "panning up": (0.5, 0.725),
        "panning down": (0.5, 0.275),
    }.get(motion, (0.5, 0.5))
    return (cx, cy, speed, 1.0 if motion == "zooming in" else 0.0, 0.5)


# ---- shape clips ---------------------------------------------------------------------------


def _trajectory(spec: ClipSpec, t: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Centre x, y and rotation angle [F] at frame times t [F]."""
    x0, y0, speed, spin, r, phase = spec.params[:6]
    m = spec.motion
    x, y = torch.full_like(t, x0), torch.full_like(t, y0)
    if m.startswith("moving"):
        dx, dy = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}[m.split()[1]]
        span_x, span_y = WIDTH + 2 * r, HEIGHT + 2 * r  # wrap once fully off-frame
        x = (x0 + dx * speed * t + r) % span_x - r
        y = (y0 + dy * speed * t + r) % span_y - r
    elif m == "bouncing":
        x = _reflect(x0 + speed * 0.8 * t * (1 if phase < math.pi else -1), r, WIDTH - r)
        floor, g = HEIGHT - r, 0.35
        height = floor - y0 + 4  # drop height; period of one bounce = 2 * sqrt(2 h / g)
        period = 2 * math.sqrt(2 * height / g)
        tau = (t + phase / (2 * math.pi) * period) % period - period / 2
        y = floor - (height - 0.5 * g * tau**2)
    elif m == "orbiting":
        a = phase + speed * 0.06 * t
        x, y = 48 + 26 * torch.cos(a), 32 + 16 * torch.sin(a)
    angle = spec.params[3] * t + (0.15 * t if m == "rotating" else 0.0)
    return x, y, angle


def _reflect(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Ping-pong x into [lo, hi]."""
    span = hi - lo
    u = (x - lo) % (2 * span)
    return lo + torch.where(u > span, 2 * span - u, u)


def _radius_fn(shape: str, phi: torch.Tensor) -> torch.Tensor:
    """Boundary radius (in units of the shape radius) at polar angle phi."""
    if shape == "circle":
        return torch.ones_like(phi)
    if shape == "star":
        return 0.66 + 0.34 * torch.cos(5 * phi)
    n = {"square": 4, "triangle": 3, "hexagon": 6}[shape]
    sector = 2 * math.pi / n
    return math.cos(math.pi / n) / torch.cos((phi % sector) - sector / 2)


def background(name: str, device) -> torch.Tensor:
    """[3, H, W] in [0, 1]."""
    yy = torch.linspace(0, 1, HEIGHT, device=device)[:, None].expand(HEIGHT, WIDTH)
    xx = torch.linspace(0, 1, WIDTH, device=device)[None, :].expand(HEIGHT, WIDTH)
    if name == "black":
        return torch.full((3, HEIGHT, WIDTH), 0.04, device=device)
    if name == "grey":
        return torch.full((3, HEIGHT, WIDTH), 0.45, device=device)
    if name == "gradient":
        return torch.stack([0.15 + 0.5 * xx, 0.1 + 0.2 * yy, 0.55 - 0.4 * yy])
    rows = torch.arange(HEIGHT, device=device)[:, None] // 8
    cols = torch.arange(WIDTH, device=device)[None, :] // 8
    board = ((rows + cols) % 2).float() * 0.35 + 0.2
    return board.expand(3, HEIGHT, WIDTH).clone()


def _render_shape(spec: ClipSpec, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rgb [F, 3, H, W] float in [0, 1], object alpha [F, H, W])."""
    device = t.device
    x, y, angle = _trajectory(spec, t)
    r, stripes, tex_angle = spec.params[4], spec.params[6], spec.params[7]
    yy = torch.arange(HEIGHT, device=device, dtype=torch.float32)[None, :, None] + 0.5
    xx = torch.arange(WIDTH, device=device, dtype=torch.float32)[None, None, :] + 0.5
    dx, dy = xx - x[:, None, None], yy - y[:, None, None]
    a = angle[:, None, None]
    u = dx * torch.cos(a) + dy * torch.sin(a)  # object frame
    v = -dx * torch.sin(a) + dy * torch.cos(a)
    rho, phi = torch.sqrt(u * u + v * v), torch.atan2(v, u)
    alpha = torch.sigmoid((r * _radius_fn(spec.shape, phi) - rho) / 0.6)
    along = u * math.cos(tex_angle) + v * math.sin(tex_angle)
    shade = 0.82 + 0.18 * torch.cos(2 * math.pi * stripes * along / (2 * r))
    colour = torch.tensor(COLOURS[spec.colour], device=device)[None, :, None, None]
    obj = colour * shade[:, None]
    bg = background(spec.background, device)[None]
    return bg * (1 - alpha[:, None]) + obj * alpha[:, None], alpha


# ---- photo clips ---------------------------------------------------------------------------

_PHOTO_CACHE: dict[tuple[str, str], torch.Tensor] = {}


def photo(word: str, device="cpu") -> torch.Tensor:
    """The photo a caption word names, [3, 192, 288] float in [0, 1] (centre crop to 2:3,
    resized once; cached per device)."""
    key = (word, str(device))
    if key not in _PHOTO_CACHE:
        img = _photo_source(next(k for k, v in PHOTOS.items() if v == word))
        h, w = img.shape[1:]
        ch, cw = (h, h * 3 // 2) if w * 2 >= h * 3 else (w * 2 // 3, w)
        top, left = (h - ch) // 2, (w - cw) // 2
        img = img[:, top : top + ch, left : left + cw]
        img = F.interpolate(img[None], size=(192, 288), mode="area")[0]
        _PHOTO_CACHE[key] = img.to(device)
    return _PHOTO_CACHE[key]


def _photo_source(name: str) -> torch.Tensor:
    """skimage.data.<name>() as [3, h, w] float in [0, 1]; where scikit-image is missing
    (a bare GPU host), from the uint8 dict a `QVG_TINY_PHOTOS` file (torch.save) holds."""
    try:
        import skimage.data

        array = torch.from_numpy(getattr(skimage.data, name)())
    except ImportError:
        import os

        array = torch.load(os.environ["QVG_TINY_PHOTOS"])[name]
    return array.permute(2, 0, 1).float() / 255


def _render_photo(spec: ClipSpec, t: torch.Tensor) -> torch.Tensor:
    """[F, 3, H, W]: a 64 x 96 window (in a 192 x 288 photo) moving over the photo."""
    cx, cy, speed, zphase, zscale = spec.params
    m = spec.motion
    # Window centre in normalised photo coordinates [-1, 1]; half-size = zoom (1 = whole).
    px, py = torch.full_like(t, 2 * cx - 1), torch.full_like(t, 2 * cy - 1)
    zoom = torch.full_like(t, zscale)
    step = speed * 2 / 288  # px per frame -> normalised units
    if m.startswith("panning"):
        dx, dy = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}[m.split()[1]]
        px = _reflect(px + dx * step * t, -1 + zscale, 1 - zscale)
        py = _reflect(py + dy * step * 1.5 * t, -1 + zscale, 1 - zscale)
    else:
        sign = -1.0 if m == "zooming in" else 1.0
        # log-zoom ping-pongs between 0.25 and 0.8 of the photo, ~1.5 % per frame
        lz = _reflect(
            math.log(0.25 + 0.55 * zphase) + sign * 0.015 * speed * t, math.log(0.25), math.log(0.8)
        )
        zoom = torch.exp(lz)
        px, py = px.clamp(-1 + zoom, 1 - zoom), py.clamp(-1 + zoom, 1 - zoom)
    theta = torch.zeros(t.shape[0], 2, 3, device=t.device)
    theta[:, 0, 0], theta[:, 1, 1] = zoom, zoom
    theta[:, 0, 2], theta[:, 1, 2] = px, py
    grid = F.affine_grid(theta, [t.shape[0], 3, HEIGHT, WIDTH], align_corners=False)
    img = photo(spec.background, t.device)[None].expand(t.shape[0], -1, -1, -1)
    return F.grid_sample(img, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


# ---- public API ----------------------------------------------------------------------------


def render(spec: ClipSpec, frames: int, start: int = 0, device="cpu", alpha: bool = False):
    """uint8 frames [frames, H, W, 3] of `spec` from frame `start`; with `alpha`, also the
    object's coverage [frames, H, W] float in [0, 1] (all 0 for photo clips)."""
    t = torch.arange(start, start + frames, device=device, dtype=torch.float32)
    if spec.kind == "shape":
        rgb, cover = _render_shape(spec, t)
    else:
        rgb = _render_photo(spec, t)
        cover = torch.zeros(frames, HEIGHT, WIDTH, device=device)
    out = (rgb.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    return (out, cover) if alpha else out


def clip_start(seed: int) -> int:
    """A seeded random start frame in [0, 200) (held-out continuation clips)."""
    return int(torch.randint(0, 200, (), generator=torch.Generator().manual_seed(seed ^ 0x5EED5)))


def clip(
    seed: int, frames: int, device="cpu", start: int | None = None
) -> tuple[torch.Tensor, str]:
    """(uint8 frames [frames, 64, 96, 3], caption) of the clip named by `seed`, from frame
    `start` (default `clip_start(seed)`, so clips do not all begin in the same phase)."""
    spec = clip_spec(seed)
    return render(spec, frames, clip_start(seed) if start is None else start, device), spec.caption


def vocabulary() -> list[str]:
    """Every word a caption can use (for docs and prompt checks)."""
    words = {"a", "on", "camera", "over", "the", *SHAPES, *COLOURS, *BACKGROUNDS, *PHOTOS.values()}
    for m in SHAPE_MOTIONS + CAMERA_MOTIONS:
        words.update(m.split())
    return sorted(words)
