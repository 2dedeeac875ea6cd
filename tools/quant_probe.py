"""Scale-search probe of the fused QVG quantize kernel (not a test).

    python tools/quant_probe.py [time] [quality] [--frames N] [--seeds N]

time (CUDA): quant_triton.quantize on qvg-int2 (and qvg-int4) [12, 37440, 128] with
triton.testing.do_bench, for the old kernel (tools/quant_variants.py: reciprocal levels with a
near-boundary re-search, fp64 error grid), the product kernel (threshold levels, integer score
sums) at search_step 1 / 2 / 4, its division lane (exact=True) and one candidate; then
qvg_triton.encode at 1 and 2 Lloyd iterations (cold). Checks, printed as OK / FAIL: product ==
exact lane (codes and scales), product == groupquant_ref bit-exact without rotation, <= 0.5% code
bytes apart with it (tl.dot vs matmul); the old kernel's agreement is reported only (it ranked
by fp32 squared errors, the product by fixed-point ones).
quality (CPU or CUDA): relative MSE of the full qvg codec (qvg_ref encode -> decode) on
video-like K and V (qvg_serve.bench.videokv) with each search variant of the reference, the
k-means stage shared: old (fp32 squared error), new full, coarse-to-fine step 2 / 4, absmax.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kernels import groupquant_ref as gq  # noqa: E402
from kernels import quant_triton, qvg_ref, qvg_triton  # noqa: E402
from kernels.container import Encoded  # noqa: E402
from kernels.hadamard import rotate_groups  # noqa: E402
from kernels.spec import CodecSpec, QuantSpec, get_spec  # noqa: E402
from tools import quant_variants  # noqa: E402
from tools.decode_sweep import kv_like  # noqa: E402  (the same clustered [1, 12, 37440, 128])

SHAPE = (1, 12, 37440, 128)
STEPS = (1, 2, 4)


def residual(x: torch.Tensor, cent: torch.Tensor, ids: torch.Tensor, qs: QuantSpec):
    """fp32 rotated residual [R, S, D] of x [R, S, D] after one stage (cent [R, C, D])."""
    r = x.float() - torch.gather(cent.float(), 1, ids.long()[..., None].expand(-1, -1, x.shape[-1]))
    return rotate_groups(r, qs.group_size) if qs.rotate else r


def reference_codes(y: torch.Tensor, qs: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    qp = gq.choose_qparams(y, qs)
    return gq.pack(gq.quantize(y, qp, qs), qs.bits), qp.scales


def check(name: str, ok: bool, detail: str = "") -> bool:
    print(f"  {'OK  ' if ok else 'FAIL'} {name} {detail}")
    return ok


# ----------------------------------------------------------------------------- quality


def quality_variants(qs: QuantSpec) -> dict[str, object]:
    """name -> function(y, qs) -> QParams; every variant decodes with the same spec."""
    out: dict[str, object] = {
        "old (fp32 sq. error)": quant_variants.old_choose_qparams,
        "new full (16)": gq.choose_qparams,
    }
    for k in STEPS[1:]:
        out[f"coarse step {k}"] = lambda y, q, k=k: gq.choose_qparams(y, replace(q, search_step=k))
    out["absmax (no search)"] = lambda y, q: gq.choose_qparams(y, replace(q, scale_search=False))
    return out


def rel_mse_by_variant(x: torch.Tensor, spec: CodecSpec, role: str) -> dict[str, float]:
    """Relative MSE of qvg_ref's full codec on x [1, H, S, D] per search variant; k-means once."""
    qs = spec.quant
    assert qs is not None
    enc = qvg_ref.encode(x, spec, role)
    b, h, s, d = x.shape
    r = x.reshape(b * h, s, d).float()
    for t in range(spec.kmeans.stages if spec.kmeans else 0):  # as qvg_ref.encode subtracts
        cent = enc.tensors[f"centroids.{t}"].reshape(b * h, -1, d)
        r = residual(r, cent, enc.tensors[f"ids.{t}"].reshape(b * h, s), replace(qs, rotate=False))
    y = rotate_groups(r, qs.group_size) if qs.rotate else r
    ref = x.float().square().sum()
    out = {}
    for name, choose in quality_variants(qs).items():
        qp = choose(y, qs)
        t = dict(enc.tensors)
        t["codes"] = gq.pack(gq.quantize(y, qp, qs), qs.bits).reshape(b, h, s, -1)
        t["scales"] = qp.scales.reshape(b, h, s, -1)
        xh = qvg_ref.decode(Encoded(spec, enc.shape, role, t), torch.float32)
        out[name] = float((xh - x.float()).square().sum() / ref)
    return out


def quality(args: argparse.Namespace, device: str) -> None:
    from qvg_serve.bench.videokv import IMAGES, video_like_kv

    for preset in args.presets:
        spec = get_spec(preset).with_kmeans(iters=args.iters)
        sums: dict[str, dict[str, list[float]]] = {"k": {}, "v": {}}
        for seed in range(args.seeds):
            k, v = video_like_kv(frames=args.frames, seed=seed, image=IMAGES[seed % len(IMAGES)])
            for role, x in (("k", k), ("v", v)):
                for name, e in rel_mse_by_variant(x.to(device), spec, role).items():
                    sums[role].setdefault(name, []).append(e)
        s = args.frames * 1560
        print(f"\n{preset} (k-means {args.iters} it), [1, 12, {s}, 128], {args.seeds} seeds")
        print(f"{'variant':<22} {'K rel MSE':>10} {'x old':>8} {'V rel MSE':>10} {'x old':>8}")
        for name in sums["k"]:
            cells = []
            for role in ("k", "v"):
                e = sums[role][name]
                old = sums[role]["old (fp32 sq. error)"]
                ratio = sum(a / o for a, o in zip(e, old, strict=True)) / len(e)
                cells.append(f"{sum(e) / len(e):>10.4e} {ratio:>8.5f}")
            print(f"{name:<22} {' '.join(cells)}")


# ----------------------------------------------------------------------------- time


def bench_ms(fn) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median"))


def time_quantize(preset: str, x: torch.Tensor) -> bool:
    spec = get_spec(preset)
    qs = spec.quant
    assert qs is not None
    enc = qvg_triton.encode(x, spec.with_kmeans(iters=1))
    b, h, s, d = x.shape
    xr = x.reshape(b * h, s, d)
    cent = enc.tensors["centroids.0"].reshape(1, b * h, -1, d)
    ids = enc.tensors["ids.0"].reshape(1, b * h, s)

    def product(q: QuantSpec, exact: bool | None = None, **kw):
        return lambda: quant_triton.quantize(xr, cent, ids, q, exact=exact, **kw)

    runs = {
        "old kernel (16)": lambda: quant_variants.quantize_old(xr, cent, ids, qs),
        "default lane, FMA rotation": product(qs, split_rot=False),
        "levels by division": product(qs, exact=True),
        "levels counted": product(qs, exact=False),
    }
    for bs, nw in ((64, 4), (128, 8), (32, 4)):
        runs[f"default lane, block {bs} w{nw}"] = product(qs, block_s=bs, num_warps=nw)
    runs["default lane, split rotation"] = product(qs)
    if qs.levels == 4:
        runs["counted, pair scores"] = product(qs, exact=False, pair_score=True)
    runs["1 candidate"] = product(replace(qs, scale_search=False))
    print(f"\n{preset} quantize [{b * h}, {s}, {d}] (codes + scales + fp8 sos)")
    for name, fn in runs.items():
        print(f"  {name:<28} {bench_ms(fn):7.3f} ms")
    return check_quantize(qs, xr, cent, ids)


def check_quantize(qs: QuantSpec, xr, cent, ids) -> bool:
    ok = True
    got = quant_triton.quantize(xr, cent, ids, qs, exact=False)
    exact = quant_triton.quantize(xr, cent, ids, qs, exact=True)
    same = torch.equal(got.codes, exact.codes) and torch.equal(got.scales, exact.scales)
    ok &= check("thresholds == division (codes, scales)", same)
    if qs.levels == 4:
        pair = quant_triton.quantize(xr, cent, ids, qs, exact=False, pair_score=True)
        same = torch.equal(got.codes, pair.codes) and torch.equal(got.scales, pair.scales)
        ok &= check("pair scores == full count (codes, scales)", same)
    fma = quant_triton.quantize(xr, cent, ids, qs, split_rot=False)
    frac = float((got.codes != fma.codes).float().mean())
    sos = float((got.scale_of_scales / fma.scale_of_scales - 1).abs().max())
    ok &= check("split rotation vs FMA rotation", frac <= 1e-4 and sos <= 1e-6,
                f"{frac:.2e} code bytes differ, sos rel {sos:.1e}")  # fmt: skip
    y = residual(xr, cent[0], ids[0], qs)
    for k in STEPS[:1]:
        q = replace(qs, search_step=k)
        got = quant_triton.quantize(xr, cent, ids, q)
        codes, _ = reference_codes(y, q)
        frac = float((got.codes != codes).float().mean())
        ok &= check(f"step {k} vs groupquant_ref (rotated)", frac <= 0.005, f"{frac:.2e} differ")
    old = quant_variants.quantize_old(xr, cent, ids, qs)
    new = quant_triton.quantize(xr, cent, ids, qs)
    frac = float((old.scales.float() != new.scales.float()).float().mean())
    print(f"  info old vs new kernel: {frac:.2e} of scales differ (fp32 vs fixed-point ranking)")
    plain = replace(qs, rotate=False)
    n = 4096  # unrotated: bit-exact against the reference
    got = quant_triton.quantize(xr[:, :n], cent, ids[:, :, :n], plain)
    codes, scales = reference_codes(residual(xr[:, :n], cent[0], ids[0, :, :n], plain), plain)
    same = torch.equal(got.codes, codes) and torch.equal(got.scales.float(), scales.float())
    fc = float((got.codes != codes).float().mean())
    fs = float((got.scales.float() != scales.float()).float().mean())
    ok &= check("unrotated kernel == groupquant_ref (bit-exact)", same,
                f"codes {fc:.2e}, scales {fs:.2e} differ")  # fmt: skip
    return ok


def time_encode(x: torch.Tensor) -> None:
    print("\nqvg_triton.encode qvg-int2, cold k-means")
    for k in (1,):
        for iters in (1, 2):
            spec = get_spec("qvg-int2").with_kmeans(iters=iters).with_quant(search_step=k)
            ms = bench_ms(lambda spec=spec: qvg_triton.encode(x, spec))
            print(f"  search_step {k}, {iters} iteration(s): {ms:7.3f} ms")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sections", nargs="*", default=["time"], choices=["time", "quality"])
    p.add_argument("--frames", type=int, default=4, help="quality: latent frames (1,560 tokens)")
    p.add_argument("--seeds", type=int, default=3, help="quality: seeds (one photo each)")
    p.add_argument("--iters", type=int, default=2, help="quality: Lloyd iterations")
    p.add_argument("--presets", nargs="+", default=["qvg-int2", "qvg-int4"], help="quality")
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available()
    ok = True
    if "time" in args.sections:
        if not cuda:
            print("time: needs CUDA")
            return 2
        x = kv_like()
        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
        for preset in ("qvg-int2", "qvg-int4"):
            ok &= time_quantize(preset, x)
        time_encode(x)
    if "quality" in args.sections:
        quality(args, "cuda" if cuda else "cpu")
    print("\nall checks OK" if ok else "\nSOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
