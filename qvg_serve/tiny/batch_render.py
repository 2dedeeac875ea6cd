"""Many procedural clips at once (the tiny model's training batches): `render_batch` gives,
bit for bit, what `data.render` gives clip by clip, in a few dozen tensor ops per batch."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from qvg_serve.tiny.data import COLOURS, HEIGHT, WIDTH, background, photo


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
