"""`qvg-serve bench codec`: every codec on the same K/V, side by side with the official QVG.

Per codec: compression ratio (all metadata counted), relative MSE of K and V
(||x - x_hat||^2 / ||x||^2), encode and decode time (CUDA: device time per call of back-to-back
calls between CUDA events; CPU: median wall time), decode GB/s (stored bytes read +
bf16 bytes written) and its fraction of the copy bandwidth measured in the same run (a bf16
clone of the same size). Also the centroid-caching experiment: the second half of the tokens
encoded cold vs warm-started from the first half's centroids. On CPU, read ratios between rows,
not absolute times.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from kernels import codec
from kernels.spec import Method, get_spec
from qvg_serve.bench import official

DEFAULT_CODECS = (
    "bf16",
    "fp8",
    "rtn-int2",
    "rtn-int4",
    "kivi-int2",
    "kivi-int4",
    "quarot-int2",
    "quarot-int4",
    "qvg-int2-plain",
    "qvg-int2",
    "qvg-int4",
    "qvg-pro-int2",
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kv", type=Path, help="safetensors or torch file with k, v [B, H, S, D]")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--codecs",
        nargs="+",
        default=list(DEFAULT_CODECS),
        metavar="NAME",
        help=f"codecs to run (default: all of {', '.join(DEFAULT_CODECS)})",
    )
    p.add_argument("--frames", type=int, default=24, help="latent frames of generated K/V")
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--grid", type=int, nargs=2, default=(30, 52), help="tokens per frame, HxW")
    p.add_argument(
        "--backend",
        default="auto",
        choices=codec.BACKENDS,
        help="QVG kernels: triton on CUDA by default, the fp32 reference otherwise",
    )
    p.add_argument("--repeat", type=int, default=None, help="timed runs per number (median)")
    p.add_argument("--no-official", action="store_true", help="skip the official quant_videogen")
    p.add_argument("--no-warm", action="store_true", help="skip the centroid-caching rows")
    p.add_argument("--json", action="store_true", help="print a JSON list, one object per row")


def load_kv(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(k, v) from a safetensors or torch file holding tensors `k` and `v` shaped [B, H, S, D]."""
    if not path.is_file():
        raise ValueError(f"--kv {path}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            data = load_file(str(path))
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any parse failure is the user's file, say so
        raise ValueError(f"--kv {path}: cannot read it as safetensors/torch ({exc})") from exc
    if not isinstance(data, dict) or "k" not in data or "v" not in data:
        raise ValueError(f"--kv {path}: needs tensors named 'k' and 'v'")
    k, v = data["k"], data["v"]
    for name, t in (("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4 or not t.is_floating_point():
            raise ValueError(f"--kv {path}: '{name}' must be a float tensor [B, H, S, D]")
    if k.shape != v.shape:
        raise ValueError(f"--kv {path}: k {tuple(k.shape)} and v {tuple(v.shape)} differ")
    return k, v


def timed(fn: Callable[[], object], device: torch.device, repeat: int) -> tuple[object, float]:
    """(last result, ms per call). CUDA: `repeat` calls back to back between two events
    (device time; launch overhead hidden as in a serving loop), mean. CPU: median wall time."""
    out = fn()  # warm-up: compiles, caches
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeat):
            out = fn()
        end.record()
        torch.cuda.synchronize(device)
        return out, start.elapsed_time(end) / repeat
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return out, statistics.median(times)


def rel_mse(x: torch.Tensor, xh: torch.Tensor) -> float:
    x = x.float()
    return float((x - xh.float()).square().sum() / x.square().sum())


def copy_gbps(x: torch.Tensor, repeat: int) -> float:
    """Copy bandwidth: a bf16 clone of x's size reads and writes 2 bytes per value."""
    xb = x.to(torch.bfloat16)
    _, ms = timed(xb.clone, x.device, repeat)
    return 2 * xb.numel() * 2 / ms / 1e6


def _row(name: str, kv: dict, enc_fn, dec_fn, nbytes_fn, repeat: int, copy: float,
         pool_enc_fn=None) -> dict:  # fmt: skip
    """Encode + decode K and V with one codec; times are per tensor (K and V averaged).
    pool_enc_fn: the same encode as the pool calls it (no per-call NaN/Inf check), timed too."""
    res = {"codec": name}
    enc_ms, dec_ms, pool_ms, stored, rels = [], [], [], 0, {}
    for role, x in kv.items():
        enc, e_ms = timed(lambda x=x, role=role: enc_fn(x, role), x.device, repeat)
        xh, d_ms = timed(lambda enc=enc: dec_fn(enc), x.device, repeat)
        if pool_enc_fn is not None:
            pool_ms.append(timed(lambda x=x, role=role: pool_enc_fn(x, role), x.device, repeat)[1])
        rels[role] = rel_mse(x, xh)
        stored += nbytes_fn(enc)
        enc_ms.append(e_ms)
        dec_ms.append(d_ms)
    x = kv["k"]
    res["ratio"] = 2 * 2 * x.numel() / stored
    res["k_rel_mse"], res["v_rel_mse"] = rels["k"], rels["v"]
    res["encode_ms"], res["decode_ms"] = statistics.mean(enc_ms), statistics.mean(dec_ms)
    res["encode_pool_ms"] = statistics.mean(pool_ms) if pool_ms else None
    gbps = (stored / 2 + 2 * x.numel()) / res["decode_ms"] / 1e6
    res["decode_gbps"], res["decode_copy_fraction"] = gbps, gbps / copy
    return res


def _ours_fns(spec, backend: str, warm: dict | None = None, check_finite: bool = True) -> tuple:
    """(encode, decode, nbytes) callables of our codec for `_row`."""
    kw = dict(backend=backend, check_finite=check_finite)
    return (
        lambda x, role: codec.encode(x, spec, role=role, warm_start=(warm or {}).get(role), **kw),
        lambda e: codec.decode(e, backend=backend),
        lambda e: e.nbytes,
    )


def ours(name: str, kv: dict, repeat: int, copy: float, backend: str = "auto") -> dict:
    """Our codec's row. "enc ms" is the public `codec.encode` (it refuses NaN/Inf input: on
    CUDA a host wait on the verdict after the encode is queued); "pool enc ms" the same encode
    as the pool calls it, `check_finite=False` (the engine checks its K/V once per step), the
    work the official package's encode does (it checks nothing)."""
    spec = get_spec(name) if "@" not in name else _iters_variant(name)
    pool_enc = _ours_fns(spec, backend, check_finite=False)[0]
    return _row(name, kv, *_ours_fns(spec, backend), repeat, copy, pool_enc)


def _iters_variant(name: str):
    """`qvg-int2@2it`: a preset with another k-means iteration count (fair encode timing)."""
    base, iters = name.split("@")
    return get_spec(base).with_kmeans(iters=int(iters.removesuffix("it")))


def official_row(p: official.OfficialPreset, kv: dict, repeat: int, copy: float) -> dict:
    return _row(
        p.name,
        kv,
        lambda x, role: official.encode(x, p),
        lambda s: official.decode(s, p),
        official.nbytes,
        repeat,
        copy,
    )


def warm_rows(name: str, kv: dict, repeat: int, copy: float, backend: str) -> list[dict]:
    """Centroid caching: tokens split in two spans; span 2 cold vs warm from span 1."""
    half = kv["k"].shape[2] // 2
    first = {r: x[:, :, :half] for r, x in kv.items()}
    second = {r: x[:, :, half:] for r, x in kv.items()}
    spec = get_spec(name)
    prev = {r: codec.encode(x, spec, role=r, backend=backend) for r, x in first.items()}
    rows = []
    for label, iters, warm in (
        ("cold", spec.kmeans.iters, None),
        ("warm", 1, prev),
        ("warm", spec.kmeans.iters, prev),
    ):
        fns = _ours_fns(spec.with_kmeans(iters=iters, warm_iters=None), backend, warm)
        rows.append(_row(f"{name} span2 {label} ({iters} it)", second, *fns, repeat, copy))
    return rows


def _kv(args: argparse.Namespace, device: torch.device) -> dict:
    if args.kv is not None:
        k, v = load_kv(args.kv)
    else:
        from qvg_serve.bench.videokv import video_like_kv

        k, v = video_like_kv(args.frames, tuple(args.grid), args.heads, args.head_dim)
    # The cache holds bf16: every codec (and the official) sees the same bf16 tensors.
    return {"k": k.to(device, torch.bfloat16), "v": v.to(device, torch.bfloat16)}


def run(args: argparse.Namespace) -> int:
    device = torch.device(args.device)
    try:
        kv = _kv(args, device)
        for name in args.codecs:
            get_spec(name.split("@")[0])
    except ValueError as exc:
        print(f"qvg-serve bench codec: {exc}", file=sys.stderr)
        return 2
    repeat = args.repeat or (10 if device.type == "cuda" else 2)
    copy = copy_gbps(kv["k"], repeat)
    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    log(f"K/V {tuple(kv['k'].shape)} bf16 on {device}; copy bandwidth {copy:.1f} GB/s")
    rows = []
    for name in args.codecs:
        log(f"  {name} ...")
        rows.append(ours(name, kv, repeat, copy, args.backend))
    reason = None if not args.no_official else "--no-official"
    reason = reason or official.available(device)
    for p in () if reason else official.PRESETS:
        log(f"  {p.name} ...")
        rows.append(official_row(p, kv, repeat, copy))
    if not args.no_warm and "qvg-int2" in args.codecs:
        log("  centroid caching ...")
        rows.extend(warm_rows("qvg-int2", kv, repeat, copy, args.backend))
    for r in rows:
        r.update(device=str(device), shape=list(kv["k"].shape), copy_gbps=copy)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(format_table(rows, reason))
    return 0


def _vs_official(rows: list[dict]) -> list[str]:
    """Encode time against the official package at the same k-means iterations (the official
    presets run 2): `qvg-intN@2it` vs `official-qvg-intN`, public API and pool call."""
    by = {r["codec"]: r for r in rows}
    out = []
    for bits in (2, 4):
        ours_, theirs = by.get(f"qvg-int{bits}@2it"), by.get(f"official-qvg-int{bits}")
        if ours_ is None or theirs is None:
            continue
        api = ours_["encode_ms"] / theirs["encode_ms"]
        pool = ours_["encode_pool_ms"] / theirs["encode_ms"]
        out.append(
            f"encode qvg-int{bits}@2it / official-qvg-int{bits}: {api:.2f}x (codec.encode, "
            f"NaN/Inf check) / {pool:.2f}x (as the pool calls it, no per-call check)"
        )
    return out


def format_table(rows: list[dict], official_skipped: str | None) -> str:
    head = (
        f"{'codec':34s} {'ratio':>6s} {'K relMSE':>9s} {'V relMSE':>9s} {'enc ms':>8s} "
        f"{'pool enc':>8s} {'dec ms':>8s} {'dec GB/s':>9s} {'of copy':>8s}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        pool = r.get("encode_pool_ms")
        lines.append(
            f"{r['codec']:34s} {r['ratio']:6.2f} {r['k_rel_mse']:9.2e} {r['v_rel_mse']:9.2e} "
            f"{r['encode_ms']:8.2f} {'-' if pool is None else f'{pool:.2f}':>8s} "
            f"{r['decode_ms']:8.3f} {r['decode_gbps']:9.1f} {r['decode_copy_fraction']:8.1%}"
        )
    lines += _vs_official(rows)
    if official_skipped:
        lines.append(f"(official quant_videogen rows skipped: {official_skipped})")
    return "\n".join(lines)


__all__ = ["add_arguments", "run", "load_kv", "Method"]
