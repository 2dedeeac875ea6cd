"""H100 tuning sweep for the fused QVG decode and an encode per-phase profile (not a test).

    python tools/decode_sweep.py [decode] [launch [--baseline OLD.py]] [encode] [rot] [probe]

decode: qvg-int2 [1, 12, 37440, 128] bf16 out, (block_s, warps, join) then (waves, stages) for
the best three; GB/s = (stored bytes + bf16 out bytes) / time, % of a bf16 clone().
launch: the product kernel over launch shapes beside earlier kernels (tools/decode_launch.py).
rot / probe: the alternatives of tools/decode_variants.py (un-rotation methods, eviction
hints, register caps) next to the product kernel (kernels/decode_triton.py, "default").
encode: qvg_triton.encode's phases timed with CUDA events (init, per-iteration assign / update /
tol check, final assign, quantize) and an assign (precision, block) sweep with id agreement.
"""

from __future__ import annotations

import functools
import sys
import time
from pathlib import Path

import torch
import triton.testing

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kernels import decode_triton, kmeans_ref, kmeans_triton, quant_triton, qvg_ref  # noqa: E402
from kernels.spec import get_spec  # noqa: E402
from tools import decode_variants  # noqa: E402

SHAPE = (1, 12, 37440, 128)


def kv_like(seed: int = 0) -> torch.Tensor:
    b, h, s, d = SHAPE
    g = torch.Generator(device="cuda").manual_seed(seed)
    centers = torch.randn(b * h, 64, d, generator=g, device="cuda") * 2
    ids = torch.randint(0, 64, (b * h, s), generator=g, device="cuda")
    x = torch.gather(centers, 1, ids[..., None].expand(-1, -1, d))
    x = x + 0.5 * torch.randn(b * h, s, d, generator=g, device="cuda")
    return x.reshape(SHAPE).to(torch.bfloat16)


def bench_ms(fn) -> float:
    return float(triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median"))


def sweep_decode(x: torch.Tensor) -> None:
    copy, enc, want, moved = int2_case(x)
    t = enc.tensors
    args = (
        t["codes"],
        t["scales"],
        None,
        t["scale_of_scales"],
        t["centroids.0"][None],
        t["ids.0"][None],
        enc.spec.quant,
    )
    res = {}

    def one(bs, nw, join, waves, st):
        key = (bs, nw, join, waves, st)
        if key in res:
            return res[key]
        try:

            def run():
                return decode_variants.decode(
                    *args, block_s=bs, num_warps=nw, join=join, waves=waves, num_stages=st
                )

            err = float((run().float() - want).abs().max())
            us = bench_ms(run) * 1e3
        except Exception as e:  # report and go on
            print(f"  {key} failed: {type(e).__name__}: {str(e)[:200]}")
            err, us = float("nan"), float("inf")
        res[key] = (us, err)
        gbs = moved / us / 1e3
        print(
            f"decode bs={bs:4d} w={nw} join={join!s:5} waves={waves} st={st}  {us:7.1f} us "
            f"{gbs:6.0f} GB/s {100 * gbs / copy:5.1f}% of copy  max|err| {err:.2e}",
            flush=True,
        )
        return res[key]

    for bs, nw in ((16, 2), (16, 4), (32, 2), (32, 4), (64, 4)):
        for join in (True, False):
            for waves, st in ((8, 3), (16, 3), (4, 4), (8, 4), (16, 4), (32, 3)):
                one(bs, nw, join, waves, st)
    k = min(res, key=lambda k: res[k][0])
    print("best", k, res[k], f"{100 * moved / res[k][0] / 1e3 / copy:.1f}% of copy")
    us = bench_ms(lambda: decode_triton.decode(*args)) * 1e3
    print(f"default {us:.1f} us {moved / us / 1e3:.0f} GB/s {100 * moved / us / 1e3 / copy:.1f}%")


def int2_case(x: torch.Tensor):
    """(copy GB/s of a bf16 clone of x, qvg-int2 Encoded of x, its fp32 reference decode, bytes
    one decode moves): the common start of the decode sweeps."""
    clone_ms = bench_ms(lambda: x.clone())
    copy = 4 * x.numel() / clone_ms / 1e6
    print(f"clone {clone_ms * 1e3:.1f} us = {copy:.0f} GB/s", flush=True)
    enc = qvg_ref.encode(x, get_spec("qvg-int2").with_kmeans(iters=1))
    return copy, enc, qvg_ref.decode(enc, torch.float32), enc.nbytes + x.numel() * 2


def sweep_rot(x: torch.Tensor) -> None:
    """Un-rotation methods (decode_variants.ROTS) x launch shapes, plus the no-rotate floor."""
    import dataclasses

    copy, enc, want, moved = int2_case(x)
    t = enc.tensors
    base = (t["codes"], t["scales"], None, t["scale_of_scales"])
    cen, ids, qs = t["centroids.0"][None], t["ids.0"][None], enc.spec.quant
    shapes = [(32, 4, 8, 3), (16, 2, 16, 3), (32, 2, 16, 3), (8, 1, 32, 3), (64, 8, 8, 3)]
    res = {}
    for rot in decode_variants.ROTS:
        for bs, nw, waves, st in shapes:
            kw = dict(rot=rot, block_s=bs, num_warps=nw, waves=waves, num_stages=st)

            def run(kw=kw):
                return decode_variants.decode(*base, cen, ids, qs, **kw)

            try:
                err = float((run().float() - want).abs().max())
                us = bench_ms(run) * 1e3
            except Exception as e:
                print(f"  {kw} failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
                continue
            gbs = moved / us / 1e3
            res[(rot, bs, nw, waves, st)] = us
            print(
                f"rot {rot:8s} bs={bs:3d} w={nw} waves={waves:2d} st={st} {us:7.1f} us "
                f"{gbs:6.0f} GB/s {100 * gbs / copy:5.1f}% of copy  max|err| {err:.2e}",
                flush=True,
            )
    if res:
        k = min(res, key=res.get)
        print("best", k, f"{res[k]:.1f} us {100 * moved / res[k] / 1e3 / copy:.1f}% of copy")
    for name, args in {
        "no-rotate": (*base, cen, ids, dataclasses.replace(qs, rotate=False)),
        "default": (*base, cen, ids, qs),
    }.items():
        us = bench_ms(lambda a=args: decode_triton.decode(*a)) * 1e3
        gbs = moved / us / 1e3
        print(f"diag {name:10s} {us:7.1f} us {gbs:6.0f} GB/s {100 * gbs / copy:5.1f}%", flush=True)
    for name in ("qvg-pro-int2", "qvg-int4"):  # group 16 / 4 bits: every method still right
        e2 = qvg_ref.encode(x[:, :2, :4096], get_spec(name).with_kmeans(iters=1))
        w2 = qvg_ref.decode(e2, torch.float32)
        t2 = e2.tensors
        ks = e2.spec.kmeans
        c2 = torch.stack([t2[f"centroids.{i}"] for i in range(ks.stages)])
        i2 = torch.stack([t2[f"ids.{i}"] for i in range(ks.stages)])
        for rot in decode_variants.ROTS:
            run = functools.partial(
                decode_variants.decode,
                t2["codes"],
                t2["scales"],
                None,
                t2.get("scale_of_scales"),
                c2,
                i2,
                e2.spec.quant,
                rot=rot,
            )
            got = run()
            us = bench_ms(run) * 1e3
            print(
                f"{name} rot {rot:8s} max|err| {float((got.float() - w2).abs().max()):.2e} "
                f"{us:6.1f} us (small shape)",
                flush=True,
            )


class Timer:
    def __init__(self):
        self.ev: dict[str, list[float]] = {}

    def __call__(self, name, fn):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        out = fn()
        b.record()
        b.synchronize()
        self.ev.setdefault(name, []).append(a.elapsed_time(b))
        return out


def profile_encode(x: torch.Tensor, name: str, iters: int, precision: str) -> None:
    spec = get_spec(name).with_kmeans(iters=iters)
    ks, qs = spec.kmeans, spec.quant
    b, h, s, d = x.shape
    xr = x.reshape(b * h, s, d)
    for _rep in range(3):  # the last repetition is reported (first ones compile)
        tm = Timer()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        init = tm("init", lambda: kmeans_triton.init_centroids(xr, ks.centroids, ks.seed))
        cent, prev = init, None
        for _ in range(ks.iters):
            ids = tm("assign", lambda c=cent: kmeans_triton.assign(xr, c, precision))
            cent, _ = tm("update", lambda i=ids, c=cent: kmeans_triton.update(xr, i, c))
            if prev is not None:
                tm("tol", lambda i=ids, p=prev: (i != p).float().mean().item())
            prev = ids
        cs = cent.to(ks.centroid_dtype)
        idx = tm("final_assign", lambda c=cs: kmeans_triton.assign(xr, c, precision))
        tm("quantize", lambda c=cs, i=idx: quant_triton.quantize(xr, c[None], i[None], qs))
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) * 1e3
    parts = " ".join(f"{k}={sum(v):.3f}ms(x{len(v)})" for k, v in tm.ev.items())
    print(f"encode {name} iters={iters} {precision}: wall {wall:.2f} ms | {parts}", flush=True)
    u = tm.ev["update"][-1]
    r, c = xr.shape[0], ks.centroids
    ids = kmeans_triton.assign(xr, cent, precision)
    tm2 = Timer()
    for _ in range(3):
        tm2("sort", lambda: torch.sort(ids, dim=1, stable=True))
        cnt = torch.zeros(r, c, dtype=torch.int32, device=x.device)
        one = torch.ones_like(ids, dtype=torch.int32)
        tm2("counts", lambda cnt=cnt, one=one: cnt.scatter_add_(1, ids, one))
        tm2("first_dup", lambda: kmeans_triton.first_duplicate(cent))
    print(
        f"  update {u:.3f} ms: sort {tm2.ev['sort'][-1]:.3f} scatter {tm2.ev['counts'][-1]:.3f}"
        f" | first_duplicate {tm2.ev['first_dup'][-1]:.3f}"
    )


def sweep_quant(x: torch.Tensor) -> None:
    spec = get_spec("qvg-int2")
    xr = x.reshape(-1, SHAPE[2], SHAPE[3])
    cent = kmeans_triton.init_centroids(xr, 256, 0).to(torch.bfloat16)
    idx = kmeans_triton.assign(xr, cent).to(torch.uint8)
    ref = quant_triton.quantize(xr, cent[None], idx[None], spec.quant)
    for bs in (16, 32, 64, 128):
        for nw in (2, 4, 8):
            try:

                def f(bs=bs, nw=nw):
                    return quant_triton.quantize(
                        xr, cent[None], idx[None], spec.quant, block_s=bs, num_warps=nw
                    )

                same = torch.equal(f().codes, ref.codes)
                print(f"quantize bs={bs} w={nw}: {bench_ms(f):.3f} ms same={same}", flush=True)
            except Exception as e:
                print(f"quantize {bs} {nw} failed: {str(e)[:200]}")


def sweep_assign(x: torch.Tensor) -> None:
    r = x.reshape(-1, SHAPE[2], SHAPE[3])
    cent = kmeans_ref.init_centroids(r.float(), 256, 0)
    want = kmeans_ref.assign(r.float(), cent)
    for prec in ("ieee", "tf32x3", "tf32"):
        for bs, bc, bk, nw, st in (
            (64, 64, 32, 4, 2),
            (128, 64, 32, 4, 2),
            (128, 128, 32, 8, 2),
            (64, 128, 32, 4, 2),
            (128, 64, 64, 8, 3),
            (64, 256, 32, 8, 2),
            (128, 256, 32, 8, 2),
        ):
            if prec == "ieee" and bs * bc > 64 * 128:
                continue
            try:

                def f(prec=prec, bs=bs, bc=bc, bk=bk, nw=nw, st=st):
                    return kmeans_triton.assign(r, cent, prec, bs, bc, bk, nw, st)

                m = float((f() == want).float().mean())
                ms = bench_ms(f)
                print(
                    f"assign {prec:6s} bs={bs} bc={bc} bk={bk} w={nw} st={st}: {ms:.3f} ms "
                    f"match {100 * m:.4f}%",
                    flush=True,
                )
            except Exception as e:
                print(f"assign {prec} {bs} {bc} {bk} {nw} failed: {str(e)[:200]}")


def main() -> None:
    what = {a for a in sys.argv[1:] if not a.startswith("--") and not a.endswith(".py")}
    what = what or {"decode", "encode"}
    x = kv_like()
    print(torch.cuda.get_device_name(), flush=True)
    if "probe" in what:
        probe(x)
    if "rot" in what:
        sweep_rot(x)
    if "decode" in what:
        sweep_decode(x)
    if "launch" in what:
        from tools import decode_launch

        decode_launch.sweep_launch(x)
    if "encode" in what:
        for prec in ("ieee", "tf32x3"):
            profile_encode(x, "qvg-int2", 2, prec)
        sweep_quant(x)
        if "assign" in what:
            sweep_assign(x)


def probe(x: torch.Tensor) -> None:
    """Decode diagnostics (what costs what) and quantize fast vs exact search."""
    import dataclasses

    clone_ms = bench_ms(lambda: x.clone())
    copy = 4 * x.numel() / clone_ms / 1e6
    o = torch.empty_like(x)
    fill_ms = bench_ms(lambda: o.fill_(1.0))
    print(
        f"clone {clone_ms * 1e3:.1f} us {copy:.0f} GB/s | fill {fill_ms * 1e3:.1f} us "
        f"{2 * x.numel() / fill_ms / 1e6:.0f} GB/s",
        flush=True,
    )
    spec = get_spec("qvg-int2").with_kmeans(iters=1)
    enc = qvg_ref.encode(x, spec)
    want = qvg_ref.decode(enc, torch.float32)
    moved = enc.nbytes + x.numel() * 2
    t = enc.tensors
    qs = spec.quant
    cen, ids = t["centroids.0"][None], t["ids.0"][None]
    base = (t["codes"], t["scales"], None, t["scale_of_scales"])
    variants = {
        "default": dict(),
        "evict=False": dict(evict=False),
        "evict bs16 w2": dict(block_s=16, num_warps=2),
        "evict bs64 w4": dict(block_s=64, num_warps=4),
        "evict bs64 w8": dict(block_s=64, num_warps=8),
        "evict waves16": dict(waves=16),
        "evict waves4 st4": dict(waves=4, num_stages=4),
        "evict join=False": dict(join=False),
        "maxnreg 64": dict(maxnreg=64),
        "maxnreg 80": dict(maxnreg=80),
        "maxnreg 96": dict(maxnreg=96),
        "bs16 w4 maxnreg 64": dict(block_s=16, maxnreg=64),
        "bs16 w4 maxnreg 80": dict(block_s=16, maxnreg=80),
        "bs32 w8 maxnreg 64": dict(num_warps=8, maxnreg=64),
        "bs64 w8 maxnreg 80": dict(block_s=64, num_warps=8, maxnreg=80),
        "maxnreg 64 waves16": dict(maxnreg=64, waves=16),
        "maxnreg 80 waves12 st2": dict(maxnreg=80, waves=12, num_stages=2),
        "bs16 w2 maxnreg 64 w32": dict(block_s=16, num_warps=2, maxnreg=64, waves=32),
    }
    for name, kw in variants.items():

        def run(kw=kw):
            return decode_variants.decode(*base, cen, ids, qs, **kw)

        err = float((run().float() - want).abs().max())
        us = bench_ms(run) * 1e3
        gbs = moved / us / 1e3
        print(
            f"decode {name:18s} {us:7.1f} us {gbs:6.0f} GB/s {100 * gbs / copy:5.1f}% "
            f"err {err:.2e}",
            flush=True,
        )
    for name, args in {
        "no-centroids": (*base, None, None, qs),
        "no-rotate": (*base, cen, ids, dataclasses.replace(qs, rotate=False)),
        "neither": (*base, None, None, dataclasses.replace(qs, rotate=False)),
    }.items():
        us = bench_ms(lambda a=args: decode_triton.decode(*a)) * 1e3
        print(f"diag {name:14s} {us:7.1f} us {moved / us / 1e3:6.0f} GB/s", flush=True)
    xr = x.reshape(-1, SHAPE[2], SHAPE[3])
    c2 = kmeans_triton.init_centroids(xr, 256, 0).to(torch.bfloat16)
    i2 = kmeans_triton.assign(xr, c2).to(torch.uint8)
    ex = quant_triton.quantize(xr, c2[None], i2[None], get_spec("qvg-int2").quant, exact=True)
    for bs, nw, exact in (
        (64, 8, True),
        (64, 8, False),
        (32, 4, False),
        (64, 4, False),
        (128, 8, False),
        (32, 8, False),
        (16, 4, False),
    ):

        def f(bs=bs, nw=nw, exact=exact):
            return quant_triton.quantize(
                xr,
                c2[None],
                i2[None],
                get_spec("qvg-int2").quant,
                block_s=bs,
                num_warps=nw,
                exact=exact,
            )

        q = f()
        same = torch.equal(q.codes, ex.codes) and torch.equal(q.scales, ex.scales)
        print(
            f"quantize bs={bs} w={nw} exact={exact}: {bench_ms(f):.3f} ms same={same}", flush=True
        )


if __name__ == "__main__":
    main()
