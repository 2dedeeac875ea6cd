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


# ---- many clips at once (the trainer's batches) ---------------------------------------------


def render_batch(specs, frames: int, starts, device="cpu"):
    """`render(spec, frames, start, device, alpha=True)` of every clip, as one batch: (uint8
    [B, frames, H, W, 3], object coverage [B, frames, H, W]). The same values (the same fp32
    operations per pixel), in a few dozen tensor ops for the whole batch instead of ~150 per
    clip: a training step renders ~100 clips and was bound by launching their small kernels."""
    specs, starts = list(specs), list(starts)
    if len(specs) != len(starts):
        raise ValueError(f"render_batch: {len(specs)} specs but {len(starts)} starts")
    rgb = torch.empty(len(specs), frames, 3, HEIGHT, WIDTH, device=device)
    cover = torch.zeros(len(specs), frames, HEIGHT, WIDTH, device=device)
    shapes = [i for i, s in enumerate(specs) if s.kind == "shape"]
    if shapes:
        got, alpha = _render_shapes([specs[i] for i in shapes], [starts[i] for i in shapes],
                                    frames, device)  # fmt: skip
        idx = torch.tensor(shapes, device=device)
        rgb[idx], cover[idx] = got, alpha
    by_photo: dict[str, list[int]] = {}
    for i, s in enumerate(specs):
        if s.kind == "photo":
            by_photo.setdefault(s.background, []).append(i)
    for word, rows in by_photo.items():
        rgb[torch.tensor(rows, device=device)] = _render_photos(
            word, [specs[i] for i in rows], [starts[i] for i in rows], frames, device
        )
    out = (rgb.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 1, 3, 4, 2).contiguous()
    return out, cover


def _table(device, **rows) -> dict[str, torch.Tensor]:
    """Per-clip Python floats -> fp32 [B, 1] columns on `device`, in one host-to-device copy
    (fp32 is the cast torch applies to a Python scalar operand, so `col * t` computes what
    `float * t` did per clip)."""
    names = list(rows)
    t = torch.tensor([list(map(float, rows[n])) for n in names], dtype=torch.float32)
    t = t.to(device)
    return {n: t[i][:, None] for i, n in enumerate(names)}


_STEP = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


def _trajectories(specs, t: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """`_trajectory` of B shape clips at frame times t [B, F] -> x, y, angle [B, F]; every
    Python-level product of `_trajectory` is formed in Python here too."""
    p = [s.params for s in specs]
    m = [s.motion for s in specs]
    d = [_STEP[k.split()[1]] if k.startswith("moving") else (0, 0) for k in m]
    height = [HEIGHT - q[4] - q[1] + 4 for q in p]  # (floor - y0) + 4
    period = [2 * math.sqrt(2 * h / 0.35) for h in height]
    span = [(WIDTH - q[4]) - q[4] for q in p]  # `_reflect(x, r, WIDTH - r)`
    c = _table(
        t.device,
        x0=[q[0] for q in p], y0=[q[1] for q in p], r=[q[4] for q in p],
        span_x=[WIDTH + 2 * q[4] for q in p], span_y=[HEIGHT + 2 * q[4] for q in p],
        vx=[dx * q[2] for (dx, _), q in zip(d, p, strict=True)],
        vy=[dy * q[2] for (_, dy), q in zip(d, p, strict=True)],
        bx=[q[2] * 0.8 for q in p], sign=[1 if q[5] < math.pi else -1 for q in p],
        span=span, span2=[2 * w for w in span], floor=[HEIGHT - q[4] for q in p],
        height=height, period=period, half=[per / 2 for per in period],
        shift=[q[5] / (2 * math.pi) * per for q, per in zip(p, period, strict=True)],
        phase=[q[5] for q in p], orbit=[q[2] * 0.06 for q in p], spin=[q[3] for q in p],
        moving=[k.startswith("moving") for k in m], bouncing=[k == "bouncing" for k in m],
        orbiting=[k == "orbiting" for k in m], rotating=[k == "rotating" for k in m],
    )  # fmt: skip
    x0, y0, r = c["x0"], c["y0"], c["r"]
    x, y = x0.expand_as(t), y0.expand_as(t)
    moving = c["moving"] > 0
    x = torch.where(moving, (x0 + c["vx"] * t + r) % c["span_x"] - r, x)
    y = torch.where(moving, (y0 + c["vy"] * t + r) % c["span_y"] - r, y)
    u = (x0 + c["bx"] * t * c["sign"] - r) % c["span2"]
    bounce_x = r + torch.where(u > c["span"], c["span2"] - u, u)
    tau = (t + c["shift"]) % c["period"] - c["half"]
    bounce_y = c["floor"] - (c["height"] - 0.5 * 0.35 * tau**2)
    bouncing = c["bouncing"] > 0
    x, y = torch.where(bouncing, bounce_x, x), torch.where(bouncing, bounce_y, y)
    a = c["phase"] + c["orbit"] * t
    orbiting = c["orbiting"] > 0
    x = torch.where(orbiting, 48 + 26 * torch.cos(a), x)
    y = torch.where(orbiting, 32 + 16 * torch.sin(a), y)
    angle = c["spin"] * t
    angle = torch.where(c["rotating"] > 0, angle + 0.15 * t, angle)
    return x, y, angle


def _render_shapes(specs, starts, frames: int, device):
    """`_render_shape` of B clips -> rgb [B, F, 3, H, W], alpha [B, F, H, W]."""
    sides = [{"square": 4, "triangle": 3, "hexagon": 6}.get(s.shape, 4) for s in specs]
    c = _table(
        device,
        start=starts, r=[s.params[4] for s in specs], two_r=[2 * s.params[4] for s in specs],
        cos_t=[math.cos(s.params[7]) for s in specs], sin_t=[math.sin(s.params[7]) for s in specs],
        k=[2 * math.pi * s.params[6] for s in specs],
        sector=[2 * math.pi / n for n in sides], half=[2 * math.pi / n / 2 for n in sides],
        top=[math.cos(math.pi / n) for n in sides],
        circle=[s.shape == "circle" for s in specs], star=[s.shape == "star" for s in specs],
    )  # fmt: skip
    img = {name: v[..., None, None] for name, v in c.items()}  # [B, 1, 1, 1]
    t = torch.arange(frames, device=device, dtype=torch.float32)[None] + c["start"]
    x, y, angle = _trajectories(specs, t)
    yy = torch.arange(HEIGHT, device=device, dtype=torch.float32)[None, None, :, None] + 0.5
    xx = torch.arange(WIDTH, device=device, dtype=torch.float32)[None, None, None, :] + 0.5
    dx, dy = xx - x[..., None, None], yy - y[..., None, None]
    a = angle[..., None, None]
    u = dx * torch.cos(a) + dy * torch.sin(a)
    v = -dx * torch.sin(a) + dy * torch.cos(a)
    rho, phi = torch.sqrt(u * u + v * v), torch.atan2(v, u)
    # `_radius_fn`: `float / tensor` is how torch computes reciprocal(tensor) * float
    poly = torch.cos((phi % img["sector"]) - img["half"]).reciprocal() * img["top"]
    star = 0.66 + 0.34 * torch.cos(5 * phi)
    radius = torch.where(img["star"] > 0, star, poly)
    radius = torch.where(img["circle"] > 0, torch.ones_like(phi), radius)
    alpha = torch.sigmoid((img["r"] * radius - rho) / 0.6)
    along = u * img["cos_t"] + v * img["sin_t"]
    shade = 0.82 + 0.18 * torch.cos(img["k"] * along / img["two_r"])
    colour = torch.tensor([COLOURS[s.colour] for s in specs]).to(device)[:, None, :, None, None]
    obj = colour * shade[:, :, None]
    names = sorted({s.background for s in specs})
    bgs = torch.stack([background(name, device) for name in names])
    which = torch.tensor([names.index(s.background) for s in specs]).to(device)
    bg = bgs[which][:, None]
    return bg * (1 - alpha[:, :, None]) + obj * alpha[:, :, None], alpha


def _render_photos(word: str, specs, starts, frames: int, device) -> torch.Tensor:
    """`_render_photo` of B clips over the same photo -> [B, F, 3, H, W]."""
    b, p = len(specs), [s.params for s in specs]
    step = [q[2] * 2 / 288 for q in p]
    d = [_STEP.get(s.motion.split()[1], (0, 0)) for s in specs]
    lo, hi = [-1 + q[4] for q in p], [1 - q[4] for q in p]
    span = [h - low for low, h in zip(lo, hi, strict=True)]  # `_reflect`'s, in Python
    zlo, zhi = math.log(0.25), math.log(0.8)
    c = _table(
        device,
        start=starts, px=[2 * q[0] - 1 for q in p], py=[2 * q[1] - 1 for q in p],
        vx=[dx * k for (dx, _), k in zip(d, step, strict=True)],
        vy=[dy * k * 1.5 for (_, dy), k in zip(d, step, strict=True)],
        lo=lo, span=span, span2=[2 * w for w in span], zoom=[q[4] for q in p],
        lz0=[math.log(0.25 + 0.55 * q[3]) for q in p],
        vz=[(-1.0 if s.motion == "zooming in" else 1.0) * 0.015 * q[2]
            for s, q in zip(specs, p, strict=True)],
        zlo=[zlo] * b, zspan=[zhi - zlo] * b, zspan2=[2 * (zhi - zlo)] * b,
        pan=[s.motion.startswith("panning") for s in specs],
    )  # fmt: skip
    t = torch.arange(frames, device=device, dtype=torch.float32)[None] + c["start"]

    def reflect(x, low, w, w2):  # `_reflect` with per-clip bounds
        u = (x - low) % w2
        return low + torch.where(u > w, w2 - u, u)

    px0, py0 = c["px"].expand(b, frames), c["py"].expand(b, frames)
    pan_x = reflect(px0 + c["vx"] * t, c["lo"], c["span"], c["span2"])
    pan_y = reflect(py0 + c["vy"] * t, c["lo"], c["span"], c["span2"])
    zoomed = torch.exp(reflect(c["lz0"] + c["vz"] * t, c["zlo"], c["zspan"], c["zspan2"]))
    pan = c["pan"] > 0
    zoom = torch.where(pan, c["zoom"].expand(b, frames), zoomed)
    px = torch.where(pan, pan_x, px0.clamp(-1 + zoomed, 1 - zoomed))
    py = torch.where(pan, pan_y, py0.clamp(-1 + zoomed, 1 - zoomed))
    zero = torch.zeros_like(zoom)
    theta = torch.stack(
        [torch.stack([zoom, zero, px], -1), torch.stack([zero, zoom, py], -1)], -2
    ).flatten(0, 1)
    grid = F.affine_grid(theta, [b * frames, 3, HEIGHT, WIDTH], align_corners=False)
    img = photo(word, device)[None].expand(b * frames, -1, -1, -1)
    out = F.grid_sample(img, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return out.view(b, frames, 3, HEIGHT, WIDTH)
