"""Where the fused QVG decode spends its time (GPU diagnostic, not a test).

    python tools/decode_where.py          # prints one table

The product kernel (kernels/decode_triton.py) with parts switched off or its tile order
changed, on qvg-int2 [1, 12, 37440, 128] -> bf16, against a bf16 clone and a store-only kernel
in the same run. Rows with a part off give wrong values on purpose: they time what is left.

    CEN   0: no centroid gather (the part's cost), 1: gather per token-group (product)
    ROT   the un-rotation butterflies on/off
    ORDER 0: persistent programs stride over the tiles (product);
          1: each program a contiguous range of tiles;
          2: contiguous ranges, and the programs that share an SM (p mod #SM) get neighbouring
             ranges, so one SM's L1 sees one or two rows' centroid tables (64 KiB each) instead
             of all twelve.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import triton
import triton.language as tl
import triton.testing

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kernels import qvg_ref  # noqa: E402
from kernels.decode_triton import _e4m3, _fwht, _num_sms, _unpack  # noqa: E402,F401
from kernels.spec import get_spec  # noqa: E402

SHAPE = (1, 12, 37440, 128)
SMALL = "--small" in sys.argv  # CPU check through TRITON_INTERPRET=1
if SMALL:
    SHAPE = (1, 2, 96, 128)


@triton.jit
def _where_kernel(
    codes_ptr, scales_ptr, sos_ptr, c_ptr, ids_ptr, out_ptr, R, S, C, N, n_tiles, per_prog,
    nsm, D: tl.constexpr, G: tl.constexpr, BITS: tl.constexpr, BM: tl.constexpr,
    LOG_G: tl.constexpr, CEN: tl.constexpr, ROT: tl.constexpr, ORDER: tl.constexpr,
    U: tl.constexpr,
):  # fmt: skip
    LEVELS: tl.constexpr = 1 << BITS
    NG: tl.constexpr = D // G
    offs_c = tl.arange(0, G)
    offs_m = tl.arange(0, BM)
    p = tl.program_id(0)
    if ORDER == 0:
        start, stop, step = p, n_tiles, tl.num_programs(0)
    else:
        if ORDER == 2:
            p = (p % nsm) * (tl.num_programs(0) // nsm) + p // nsm
        start = p * per_prog
        stop = tl.minimum(start + per_prog, n_tiles)
        step = 1
    for sup in range(start, stop, step):
        for u in tl.static_range(U):
            n = (sup * U + u) * BM + offs_m
            ok = n < N
            tg = n // NG
            g = n % NG
            row = tg // S
            q = _unpack(codes_ptr, n, ok, G, BITS).to(tl.float32)
            s = tl.load(scales_ptr + n, mask=ok, other=0).to(tl.int32)
            s = _e4m3(s) * tl.load(sos_ptr + row, mask=ok, other=1.0)
            lv = q - (LEVELS - 1) / 2
            if ROT:
                y = _fwht(lv, BM, G, LOG_G) * (s * (1.0 / tl.sqrt(G * 1.0)))[:, None]
            else:
                y = lv * s[:, None]
            if CEN:
                idx = tl.load(ids_ptr + tg.to(tl.int64), mask=ok, other=0)
                cbase = (row.to(tl.int64) * C + idx.to(tl.int64)) * D + g * G
                cen = tl.load(c_ptr + cbase[:, None] + offs_c[None, :], mask=ok[:, None], other=0.0)
                y += cen.to(tl.float32)
            obase = tg.to(tl.int64) * D + g * G
            tl.store(
                out_ptr + obase[:, None] + offs_c[None, :], y.to(tl.bfloat16), mask=ok[:, None]
            )


@triton.jit
def _store_kernel(out_ptr, N, n_tiles, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    for tile in range(tl.program_id(0), n_tiles, tl.num_programs(0)):
        n = tile * BLOCK + offs
        tl.store(out_ptr + n, tl.zeros([BLOCK], tl.bfloat16), mask=n < N)


def bench_us(fn) -> float:
    if SMALL:
        fn()
        return 1.0
    return 1e3 * float(triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median"))


def main() -> None:
    dev = torch.device("cpu" if SMALL else "cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    b, h, s, d = SHAPE
    centers = torch.randn(b * h, 64, d, generator=g, device=dev) * 2
    ids = torch.randint(0, 64, (b * h, s), generator=g, device=dev)
    x = torch.gather(centers, 1, ids[..., None].expand(-1, -1, d))
    x = (x + 0.5 * torch.randn(b * h, s, d, generator=g, device=dev)).reshape(SHAPE)
    x = x.to(torch.bfloat16)
    spec = get_spec("qvg-int2").with_kmeans(iters=1)
    enc = qvg_ref.encode(x, spec)
    want = qvg_ref.decode(enc, torch.float32)
    t = enc.tensors
    qs = enc.spec.quant
    gs = qs.group_size
    codes, scales = t["codes"].contiguous(), t["scales"].contiguous()
    if scales.dtype != torch.float8_e4m3fn:
        raise SystemExit(f"expects fp8 scales, got {scales.dtype}")
    sc = scales.view(torch.uint8)
    sos = t["scale_of_scales"].contiguous()
    cen, idx = t["centroids.0"].contiguous(), t["ids.0"].contiguous()
    c = cen.shape[-2]
    out = torch.empty(SHAPE, dtype=torch.bfloat16, device=dev)
    moved = enc.nbytes + x.numel() * 2
    nsm = 4 if SMALL else _num_sms(0)
    clone_us = bench_us(lambda: x.clone())
    copy = 4 * x.numel() / clone_us / 1e3
    print(f"{'cpu' if SMALL else torch.cuda.get_device_name()}  SMs {nsm}", flush=True)
    print(f"clone {clone_us:.1f} us = {copy:.0f} GB/s (read + write)", flush=True)
    n_out = x.numel()
    for block in (2048, 8192):
        nt = triton.cdiv(n_out, block)

        def st(block=block, nt=nt):
            _store_kernel[(min(nt, 16 * nsm),)](out, n_out, nt, BLOCK=block, num_warps=4)

        us = bench_us(st)
        print(f"store-only block {block}: {us:.1f} us = {2 * n_out / us / 1e3:.0f} GB/s written")
    from kernels import decode_triton

    for launch in (decode_triton.Launch(), decode_triton.Launch(32, 4, 3, 32)):

        def prod(launch=launch):
            decode_triton.decode(
                codes, scales, None, sos, cen[None], idx[None], qs, out=out, launch=launch
            )

        us = bench_us(prod)
        gbs = moved / us / 1e3
        print(f"product {launch}: {us:6.1f} us {gbs:5.0f} GB/s {100 * gbs / copy:5.1f}% of copy")
    ng = d // gs
    n = b * h * s * ng
    rows = []
    for bs, nw, waves in ((32, 4, 32), (32, 2, 16), (16, 4, 32), (64, 4, 16)):
        bm = bs * ng
        n_tiles = triton.cdiv(n, bm)
        for cen_on, rot, order, u in (
            (1, 1, 0, 1), (1, 1, 1, 1), (1, 1, 2, 1), (1, 1, 0, 2), (1, 1, 2, 2), (0, 1, 0, 1),
            (1, 0, 0, 1), (0, 0, 0, 1), (1, 0, 2, 1),
        ):  # fmt: skip
            n_sup = triton.cdiv(n_tiles, u)
            grid = min(n_sup, waves * nsm)
            grid -= grid % nsm if grid > nsm else 0
            per = triton.cdiv(n_sup, grid)

            def run(cen_on=cen_on, rot=rot, order=order, bm=bm, grid=grid, nt=n_sup,
                    per=per, nw=nw, u=u):  # fmt: skip
                _where_kernel[(grid,)](
                    codes, sc, sos, cen, idx, out, b * h, s, c, n, nt, per, nsm, D=d, G=gs,
                    BITS=qs.bits, BM=bm, LOG_G=gs.bit_length() - 1, CEN=cen_on, ROT=rot,
                    ORDER=order, U=u, num_warps=nw, num_stages=3,
                )  # fmt: skip

            run()
            err = float((out.float() - want).abs().max()) if cen_on and rot else float("nan")
            us = bench_us(run)
            gbs = moved / us / 1e3
            rows.append((us, bs, nw, waves, cen_on, rot, order, u))
            print(
                f"bs {bs:2d} w{nw} waves {waves:2d} cen {cen_on} rot {rot} order {order} "
                f"unroll {u}: "
                f"{us:6.1f} us {gbs:5.0f} GB/s {100 * gbs / copy:5.1f}% of copy  err {err:.1e}",
                flush=True,
            )


if __name__ == "__main__":
    main()
