"""A line plot as PNG with Pillow only (matplotlib is not a dependency): axes, lines, legend."""

from __future__ import annotations

from pathlib import Path

COLOURS = ((214, 39, 40), (31, 119, 180), (44, 160, 44), (148, 103, 189))
W, H, PAD = 720, 400, 56


def write_line_plot(
    path: Path, x: list[float], series: dict[str, list[float]], title: str = ""
) -> Path:
    """Plot each named series against `x`; y from 0 to the largest value."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    x_max = max(x, default=1.0) or 1.0
    y_max = max((max(v, default=0.0) for v in series.values()), default=1.0) or 1.0

    def at(xv: float, yv: float) -> tuple[float, float]:
        return (PAD + (W - 2 * PAD) * xv / x_max, H - PAD - (H - 2 * PAD) * yv / y_max)

    d.rectangle((PAD, PAD, W - PAD, H - PAD), outline="black")
    for i in range(5):  # y ticks at 0, 1/4 ... of the max
        yv = y_max * i / 4
        _, yp = at(0, yv)
        d.line((PAD - 4, yp, PAD, yp), fill="black")
        d.text((4, yp - 6), f"{yv:.1f}", fill="black")
    d.text((W - PAD - 40, H - PAD + 8), f"{x_max:.1f} s", fill="black")
    d.text((PAD, 16), title, fill="black")
    for n, (name, ys) in enumerate(series.items()):
        colour = COLOURS[n % len(COLOURS)]
        pts = [at(a, b) for a, b in zip(x, ys, strict=True)]
        if len(pts) > 1:
            d.line(pts, fill=colour, width=2)
        d.rectangle(
            (W - PAD - 150, PAD + 8 + 16 * n, W - PAD - 140, PAD + 18 + 16 * n), fill=colour
        )
        d.text((W - PAD - 134, PAD + 6 + 16 * n), name, fill="black")
    img.save(path, "PNG")
    return Path(path)
