"""The decode kernel's launch sweep beside an earlier kernel (GPU diagnostic, not a test).

    git show c0871e3:kernels/decode_triton.py > OLD.py
    python tools/decode_sweep.py launch [--baseline OLD.py]

Run through tools/decode_sweep.py (same tensors, clone and timing as its other sweeps).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kernels import decode_triton, qvg_ref  # noqa: E402
from kernels.spec import get_spec  # noqa: E402
from tools import decode_variants  # noqa: E402
from tools.decode_sweep import bench_ms, int2_case  # noqa: E402


def _baseline_module():
    """`--baseline FILE`: an earlier decode_triton.py (e.g. `git show c0871e3:kernels/
    decode_triton.py`), imported as a module to time beside the current one."""
    import importlib.util

    if "--baseline" not in sys.argv:
        return None
    path = sys.argv[sys.argv.index("--baseline") + 1]
    src = Path(path).read_text().replace("from .spec import", "from kernels.spec import")
    mod_path = Path("/tmp/_decode_baseline.py")
    mod_path.write_text(src)
    spec = importlib.util.spec_from_file_location("_decode_baseline", mod_path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def sweep_launch(x: torch.Tensor) -> None:
    """The product kernel over launch shapes, next to the lane-layout variant
    (decode_variants, "fwht" at its best H100 launch), the `--baseline` kernel if given, and a
    bf16 clone, same tensors, same run; then qvg-int4 and qvg-pro-int2 at the defaults."""
    import dataclasses

    copy, enc, want, moved = int2_case(x)
    t = enc.tensors
    args = (t["codes"], t["scales"], None, t["scale_of_scales"])
    args = (*args, t["centroids.0"][None], t["ids.0"][None], enc.spec.quant)

    def show(name, run):
        try:
            err = float((run().float() - want).abs().max())
            us = bench_ms(run) * 1e3
        except Exception as e:  # report and go on
            print(f"  {name} failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
            return float("inf")
        gbs = moved / us / 1e3
        print(
            f"{name:44s} {us:7.1f} us {gbs:6.0f} GB/s {100 * gbs / copy:5.1f}% of copy  "
            f"max|err| {err:.2e}",
            flush=True,
        )
        return us

    base = _baseline_module()
    kernels = {"product": decode_triton.decode, "baseline": base.decode if base else None}
    show("lanes (decode_variants fwht bs32 w2 waves16)", lambda: decode_variants.decode(*args))
    if base is not None:
        show("baseline default", lambda: base.decode(*args))
    res = {}
    for bs, nw in ((16, 1), (32, 1), (32, 2), (64, 2), (64, 4), (128, 8)):
        for waves in (0, 16):
            la = decode_triton.Launch(block_s=bs, num_warps=nw, num_stages=3, waves=waves)
            res[la] = show(f"product {la}", lambda la=la: decode_triton.decode(*args, launch=la))
    for la in sorted(res, key=res.get)[:2]:
        for waves, st, half in ((4, 3, True), (32, 3, True), (la.waves, 1, True),
                                (la.waves, 2, True), (la.waves, 3, False)):  # fmt: skip
            lb = dataclasses.replace(la, waves=waves, num_stages=st, half=half)
            if lb not in res:
                res[lb] = show(
                    f"product {lb}", lambda lb=lb: decode_triton.decode(*args, launch=lb)
                )
    tma = [dataclasses.replace(la, tma=True) for la in sorted(res, key=res.get)[:3]]
    tma += [decode_triton.Launch(block_s=bs, num_warps=nw, num_stages=3, tma=True)
            for bs, nw in ((64, 4), (128, 4), (128, 8))]  # fmt: skip
    for lb in tma:  # one TMA store per tile: larger tiles may pay off there
        if lb not in res:
            res[lb] = show(f"product {lb}", lambda lb=lb: decode_triton.decode(*args, launch=lb))
    best = min(res, key=res.get)
    print(f"best {best} {res[best]:.1f} us", flush=True)
    for rep in range(2):  # the defaults again, interleaved (order effects)
        for name, fn in kernels.items():
            if fn is not None:
                show(f"{name} default, again ({rep + 1})", lambda fn=fn: fn(*args))
    norot = (*args[:-1], dataclasses.replace(enc.spec.quant, rotate=False))
    for name, fn in kernels.items():
        if fn is not None:
            us = bench_ms(lambda fn=fn: fn(*norot)) * 1e3
            print(f"{name} default, no un-rotation (wrong values: the floor) {us:.1f} us")
    for name in ("qvg-int4", "qvg-pro-int2"):
        e2 = qvg_ref.encode(x, get_spec(name).with_kmeans(iters=1))
        w2 = qvg_ref.decode(e2, torch.float32)
        t2, ks = e2.tensors, e2.spec.kmeans
        a2 = (t2["codes"], t2["scales"], None, t2.get("scale_of_scales"))
        a2 = (*a2, torch.stack([t2[f"centroids.{i}"] for i in range(ks.stages)]))
        a2 = (*a2, torch.stack([t2[f"ids.{i}"] for i in range(ks.stages)]), e2.spec.quant)
        m2 = e2.nbytes + x.numel() * 2
        for label, fn in (("lanes", decode_variants.decode), *kernels.items()):
            if fn is None:
                continue
            err = float((fn(*a2).float() - w2).abs().max())
            us = bench_ms(lambda fn=fn, a2=a2: fn(*a2)) * 1e3
            gbs = m2 / us / 1e3
            print(
                f"{name} {label:8s} {us:7.1f} us {gbs:6.0f} GB/s {100 * gbs / copy:5.1f}% of "
                f"copy  max|err| {err:.2e}",
                flush=True,
            )
