"""`qvg-serve bench quality`: long videos with a quantized K/V history vs the BF16-cache video.

Every (prompt, codec) pair is one stream with its own dense cache (`CodecKV`); all streams of
a run share one batched forward per pass and the engine's noise order (one `StreamNoise` per
stream, seeded by its prompt), so the codec is the only difference between a prompt's videos.
After each commit, whole spans of `--span-frames` frames older than the recent window (and not
among the first `--sink-frames`) have the K and V of every layer round-tripped through
`kernels.codec` (QVG spans warm-started from the same layer/role's previous span) and replaced
by the reconstruction, as the paged pool's pages would hold them. The `bf16` stream keeps its
K/V in bf16 (as the pool stores them) and is the reference.

Per codec: mean PSNR and SSIM of every frame vs the reference, worst 48-frame-window mean PSNR
(worst over prompts), compression ratio of the quantized spans and of the whole KV cache at
the end, PSNR per frame index (mean over prompts). Identical frames (PSNR = inf) count as
100 dB. Writes quality.json and quality_drift.png into --out.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from kernels import codec
from qvg_serve.engine import sampler
from qvg_serve.engine.config import EngineConfig
from qvg_serve.engine.engine import SHIFT, codec_specs
from qvg_serve.models.base import ChunkInput
from qvg_serve.models.dense_context import DenseContext, DenseKV

CODECS = (
    "bf16", "fp8", "rtn-int2", "rtn-int4", "kivi-int2", "kivi-int4", "quarot-int2",
    "quarot-int4", "qvg-int2", "qvg-int4", "qvg-pro-int2",
)  # fmt: skip
PROMPTS = (
    "a red circle bouncing on checkerboard",
    "camera panning right over the astronaut",
)
PSNR_CAP = 100.0
WINDOW = 48


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--frames", type=int, default=720, help="video frames per prompt")
    p.add_argument("--codecs", nargs="+", default=list(CODECS), metavar="NAME")
    p.add_argument("--prompts", nargs="+", default=list(PROMPTS), metavar="TEXT")
    p.add_argument("--seed", type=int, default=0, help="noise seed of the first prompt (+1 each)")
    p.add_argument("--model", default="tiny")
    p.add_argument("--weights", default=None, help="checkpoint (default: shipped or random)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sink-frames", type=int, default=3, help="first frames kept bf16")
    p.add_argument("--window-frames", type=int, default=3, help="recent frames kept bf16")
    p.add_argument("--span-frames", type=int, default=6, help="frames per encoded span")
    p.add_argument("--centroids", type=int, default=None, help="QVG k-means centroids")
    p.add_argument("--out", type=Path, default=Path("bench_quality"))
    p.add_argument("--json", action="store_true", help="print the JSON list on stdout")
    p.add_argument("--dump-kv", type=Path, default=None, help="safetensors of one layer's K/V")
    p.add_argument("--dump-frames", type=int, default=144, help="frames in --dump-kv (size)")


class CodecKV(DenseKV):
    """A dense history whose old spans are stored through a codec (None: bf16 only)."""

    def __init__(self, layers: int, spec, tpf: int, sink: int, window: int, span: int) -> None:
        super().__init__([None] * layers, [None] * layers)
        self.spec, self.tpf, self.window, self.span = spec, tpf, window * tpf, span * tpf
        self.done = [sink * tpf] * layers  # tokens before this index are sink or encoded
        self.warm: dict[tuple[int, str], object] = {}
        self.spans = 0  # spans encoded in layer 0

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        dt = k.dtype
        super().append(layer, k.bfloat16().to(dt), v.bfloat16().to(dt))
        old = self.tokens(layer) - self.window  # tokens outside the recent window
        while self.spec is not None and old - self.done[layer] >= self.span:
            self._encode_span(layer, self.done[layer])
            self.done[layer] += self.span
            self.spans += layer == 0

    def _encode_span(self, layer: int, a: int) -> None:
        b = a + self.span
        for role, hist in (("k", self.k), ("v", self.v)):
            x = hist[layer][a:b].permute(1, 0, 2)[None]  # [1, H, S, D]
            enc = codec.encode(x, self.spec, role=role, warm_start=self.warm.get((layer, role)))
            self.warm[(layer, role)] = enc
            y = codec.decode(enc, out_dtype=x.dtype)[0].permute(1, 0, 2)
            hist[layer][a:b] = y


def specs_for(names, tpf: int, centroids: int | None) -> dict:
    """The engine's codec specs (its default centroid count for this model's frame size)."""
    cfg = SimpleNamespace(formats=tuple(n for n in names if n != "bf16"), centroids=centroids)
    specs = codec_specs(cfg, tpf)
    return {n: specs.get(n) for n in names}


def generate(rt, texts, streams, args, log) -> list[list[torch.Tensor]]:
    """Chunk by chunk, all streams in one batch: uint8 frames [F, H, W, 3] per stream."""
    mc, model, dev = rt.model.config, rt.model, rt.device
    dtype = next(model.parameters()).dtype
    shape = (mc.in_channels, mc.frames_per_chunk, mc.latent_height, mc.latent_width)
    noises = [sampler.StreamNoise(seed, shape) for _, seed in texts]
    conds = [t.to(dev, dtype) for t, _ in texts]
    n_chunks = math.ceil(args.frames / (mc.frames_per_chunk * mc.frames_per_latent))
    frames: list[list[torch.Tensor]] = [[] for _ in streams]
    t0 = time.time()
    with torch.no_grad():
        for ch in range(n_chunks):
            start = ch * mc.frames_per_chunk
            xs = [sampler.start(n, dev, dtype) for n in noises]
            x0s = xs
            for i, t in enumerate(mc.timesteps):
                inp = [ChunkInput(x, t, c, start) for x, c in zip(xs, conds, strict=True)]
                flows = model.forward(inp, DenseContext(model, streams, inp))
                t_next = mc.timesteps[i + 1] if i + 1 < len(mc.timesteps) else None
                steps = [
                    sampler.step(x, f, t, t_next, SHIFT, n)
                    for x, f, n in zip(xs, flows, noises, strict=True)
                ]
                xs, x0s = [s[0] for s in steps], [s[1] for s in steps]
            inp = [ChunkInput(x0, 0.0, c, start) for x0, c in zip(x0s, conds, strict=True)]
            model.forward(inp, DenseContext(model, streams, inp, commit=True))
            for out, x0 in zip(frames, x0s, strict=True):
                out.append(rt.decoder.decode(x0.float().cpu()))
            maybe_dump(args, streams[0], mc, ch + 1 == n_chunks)
            if (ch + 1) % 20 == 0 or ch + 1 == n_chunks:
                done = (ch + 1) * mc.frames_per_chunk * mc.frames_per_latent
                log(f"  frame {done}/{n_chunks * shape[1] * mc.frames_per_latent} "
                    f"({time.time() - t0:.0f} s)")  # fmt: skip
    return [torch.cat(f)[: args.frames] for f in frames]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return PSNR_CAP if mse == 0 else min(PSNR_CAP, 10 * math.log10(255.0**2 / mse))


def frame_scores(ref: torch.Tensor, got: torch.Tensor) -> tuple[list[float], list[float]]:
    from skimage.metrics import structural_similarity

    p, s = [], []
    for a, b in zip(ref.numpy(), got.numpy(), strict=True):
        p.append(psnr(a, b))
        s.append(float(structural_similarity(a, b, channel_axis=-1, data_range=255)))
    return p, s


def worst_window(curve: list[float], n: int = WINDOW) -> float:
    c = np.asarray(curve)
    if len(c) <= n:
        return float(c.mean())
    return float(np.convolve(c, np.ones(n) / n, mode="valid").min())


def ratios(spec, stream: CodecKV, mc) -> tuple[float, float]:
    """(bf16 / stored bytes of one encoded span, bf16 / stored bytes of the whole cache)."""
    if spec is None:
        return 1.0, 1.0
    shape = (1, mc.heads, stream.span, mc.head_dim)
    span_bytes = sum(codec.predict_nbytes(spec, shape, role) for role in "kv")
    span_bf16 = 2 * 2 * math.prod(shape)
    total = stream.tokens(0)
    plain = (total - stream.spans * stream.span) * mc.heads * mc.head_dim * 2 * 2
    return span_bf16 / span_bytes, total * mc.heads * mc.head_dim * 4 / (
        plain + stream.spans * span_bytes
    )


def summarise(names, videos, streams, specs, mc, n_prompts) -> list[dict]:
    rows = []
    for c, name in enumerate(names):
        curves, ssims, worst = [], [], []
        for p in range(n_prompts):
            ref, got = videos[p * len(names)], videos[p * len(names) + c]
            ps, ss = frame_scores(ref, got)
            curves.append(ps)
            ssims.extend(ss)
            worst.append(worst_window(ps))
        curve = np.mean(curves, axis=0)
        ratio, kv_ratio = ratios(specs[name], streams[c], mc)
        rows.append({
            "codec": name, "ratio": round(ratio, 3), "kv_ratio": round(kv_ratio, 3),
            "psnr_mean": float(curve.mean()), "psnr_worst_window": min(worst),
            "ssim_mean": float(np.mean(ssims)), "frames": len(curve),
            "psnr_per_frame": [round(float(x), 3) for x in curve],
        })  # fmt: skip
    return rows


PALETTE = (
    (0, 0, 0), (214, 39, 40), (31, 119, 180), (44, 160, 44), (148, 103, 189), (255, 127, 14),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)  # fmt: skip


def drift_plot(path: Path, rows: list[dict], title: str) -> None:
    """PSNR vs frame index, one line per codec (the bf16 reference is left out: 100 dB)."""
    from PIL import Image, ImageDraw

    w, h, pad, right = 900, 480, 50, 150
    rows = [r for r in rows if r["codec"] != "bf16"]
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    n = max((r["frames"] for r in rows), default=1)
    top = max((max(r["psnr_per_frame"]) for r in rows), default=1.0)
    y_max = 10 * math.ceil(min(top, PSNR_CAP) / 10) or 10

    def at(x: float, y: float) -> tuple[float, float]:
        return pad + (w - pad - right) * x / max(n - 1, 1), h - pad - (h - 2 * pad) * y / y_max

    d.rectangle((pad, pad, w - right, h - pad), outline="black")
    for yv in range(0, int(y_max) + 1, 10):
        d.text((8, at(0, yv)[1] - 6), f"{yv} dB", fill="black")
    for xv in range(0, n, max(1, n // 6)):
        d.text((at(xv, 0)[0] - 8, h - pad + 6), str(xv), fill="black")
    d.text((w // 2 - 60, h - 20), "frame index", fill="black")
    d.text((pad, 16), title, fill="black")
    for i, r in enumerate(rows):
        col = PALETTE[(i + 1) % len(PALETTE)]
        d.line([at(x, y) for x, y in enumerate(r["psnr_per_frame"])], fill=col, width=2)
        d.rectangle((w - right + 10, pad + 16 * i, w - right + 20, pad + 10 + 16 * i), fill=col)
        d.text((w - right + 26, pad - 2 + 16 * i), r["codec"], fill="black")
    img.save(path, "PNG")


def maybe_dump(args, stream: DenseKV, mc, last: bool) -> None:
    """Save the reference's middle-layer K/V once --dump-frames frames (or all) are in."""
    want = min(args.frames, args.dump_frames) * mc.tokens_per_frame
    if args.dump_kv is not None and not args.dump_kv.exists() and (stream.tokens() >= want or last):
        dump_kv(args.dump_kv, stream, mc.layers // 2, want)


def dump_kv(path: Path, stream: DenseKV, layer: int, tokens: int) -> None:
    from safetensors.torch import save_file

    def take(x: torch.Tensor) -> torch.Tensor:
        return x[:tokens].permute(1, 0, 2)[None].to(torch.bfloat16).cpu().contiguous()

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"k": take(stream.k[layer]), "v": take(stream.v[layer])}, str(path))


def table(rows: list[dict]) -> str:
    lines = [f"{'codec':<14}{'ratio':>7}{'kv ratio':>9}{'PSNR':>8}{'worst48':>9}{'SSIM':>8}"]
    for r in rows:
        lines.append(
            f"{r['codec']:<14}{r['ratio']:>7.2f}{r['kv_ratio']:>9.2f}{r['psnr_mean']:>8.2f}"
            f"{r['psnr_worst_window']:>9.2f}{r['ssim_mean']:>8.4f}"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from qvg_serve.engine.runtime import load_runtime

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    names = ["bf16"] + [c for c in args.codecs if c != "bf16"]
    try:
        if args.frames < 1:
            raise ValueError(f"--frames {args.frames}: must be >= 1")
        rt = load_runtime(EngineConfig(model=args.model, weights=args.weights,
                                       device=args.device, seed=args.seed), warn=print)  # fmt: skip
        mc = rt.model.config
        specs = specs_for(names, mc.tokens_per_frame, args.centroids)
        embeds = rt.text_encoder.encode(list(args.prompts))
    except (ValueError, KeyError) as exc:
        print(f"qvg-serve bench quality: {exc}", file=sys.stderr)
        return 2
    texts, streams = [], []
    for p in range(len(args.prompts)):
        for name in names:
            texts.append((embeds[p], args.seed + p))
            kv = (args.sink_frames, args.window_frames, args.span_frames)
            streams.append(CodecKV(mc.layers, specs[name], mc.tokens_per_frame, *kv))
    log(f"bench quality: {mc.name} ({rt.weights}), {len(args.prompts)} prompts x "
        f"{len(names)} codecs, {args.frames} frames, {rt.device}")  # fmt: skip
    if args.dump_kv is not None and args.dump_kv.exists():
        args.dump_kv.unlink()  # a stale file from an earlier run: write this run's
    t0 = time.time()
    videos = generate(rt, texts, streams, args, log)
    log(f"generated in {time.time() - t0:.0f} s; scoring (PSNR capped at {PSNR_CAP:.0f} dB)")
    rows = summarise(names, videos, streams, specs, mc, len(args.prompts))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quality.json").write_text(json.dumps(rows, indent=1))
    title = f"PSNR vs the BF16-cache video ({mc.name}, mean of {len(args.prompts)} prompts)"
    drift_plot(args.out / "quality_drift.png", rows, title)
    print(json.dumps(rows) if args.json else table(rows))
    log(f"PSNR of identical frames capped at {PSNR_CAP:.0f} dB; total {time.time() - t0:.0f} s")
    return 0
