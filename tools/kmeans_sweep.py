"""H200 timing of the QVG encoder's k-means phases, old vs new (not a test).

    python tools/kmeans_sweep.py            # CUDA, about 2 minutes
    python tools/kmeans_sweep.py --smoke    # tiny shapes; on CPU through TRITON_INTERPRET

Shapes: A = tools.decode_sweep.kv_like() [1, 12, 37440, 128] bf16; B = a random clustered batch
[60, 12, 9360, 128] bf16 (720 rows, as a pool encodes every layer's K and V at once); C = 256.
Per shape: first_duplicate (torch, tools/kmeans_variants.py) vs the two Triton launches;
assign with fp32 centroids (tf32x3; and bf16x3) vs bf16 centroids (native), ids agreement with
kmeans_ref.assign; update sort (tools/kmeans_variants.py) vs one-hot, max differences and an
OK/FAIL at the fp32 test tolerance; a few block configs of the new kernels; qvg_triton.encode
(qvg-int2) cold at 1 and 2 Lloyd iterations and warm-started (1 iteration). Last: a
torch.profiler per-kernel table of one warm 1-iteration encode of B.
Times: triton.testing.do_bench medians (CUDA), one timed call (CPU smoke).
"""

from __future__ import annotations

import os
import sys
import time
from functools import partial
from pathlib import Path

import torch

SMOKE = "--smoke" in sys.argv[1:]
if SMOKE and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

import triton.testing  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kernels import kmeans_ref, kmeans_triton, qvg_triton  # noqa: E402
from kernels.kmeans_triton import BF16X3  # noqa: E402
from kernels.spec import get_spec  # noqa: E402
from tools import kmeans_variants  # noqa: E402

CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"
FP32_TOL = 1e-5  # atol = rtol, as tests/conftest.py's "fp32" row
# assign: (block_s, block_c, num_warps, num_stages); update: (block_c, block_s, warps, stages)
ASSIGN16_CONFIGS = ((128, 128, 8, 3), (64, 128, 4, 3), (128, 64, 4, 3), (128, 256, 8, 2))
BF16X3_CONFIGS = ((128, 64, 8, 2), (128, 64, 4, 3), (64, 128, 4, 2))
UPDATE_CONFIGS = ((128, 64, 8, 3), (64, 64, 4, 3), (128, 128, 8, 2), (128, 32, 4, 3))


def bench_ms(fn) -> float:
    if not CUDA:
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    return float(triton.testing.do_bench(fn, warmup=5, rep=25, return_mode="median"))


def clustered(b: int, h: int, s: int, d: int, seed: int) -> torch.Tensor:
    """bf16 [B, H, S, D]: 64 Gaussian clusters per row (like decode_sweep.kv_like)."""
    g = torch.Generator(device=DEV).manual_seed(seed)
    centers = torch.randn(b * h, 64, d, generator=g, device=DEV) * 2
    ids = torch.randint(0, 64, (b * h, s), generator=g, device=DEV)
    x = torch.gather(centers, 1, ids[..., None].expand(-1, -1, d))
    x = x + 0.5 * torch.randn(b * h, s, d, generator=g, device=DEV)
    return x.reshape(b, h, s, d).to(torch.bfloat16)


def shapes() -> dict[str, tuple[torch.Tensor, torch.Tensor, int]]:
    """name -> (x, a second span for warm starts, centroids C)."""
    if SMOKE:
        return {
            "A": (clustered(1, 2, 100, 64, 0), clustered(1, 2, 100, 64, 1), 16),
            "B": (clustered(2, 3, 60, 64, 2), clustered(2, 3, 60, 64, 3), 16),
        }
    from tools.decode_sweep import kv_like

    return {
        "A": (kv_like(0), kv_like(1), 256),
        "B": (clustered(60, 12, 9360, 128, 2), clustered(60, 12, 9360, 128, 3), 256),
    }


def say(line: str) -> None:
    print(line, flush=True)


def diff(got: torch.Tensor, want: torch.Tensor, verdict: bool = True) -> str:
    """Max abs and max relative (to |want|, floored at 1e-3) differences, and OK / FAIL at the
    fp32 test tolerance."""
    d = (got - want).abs()
    rel = float((d / want.abs().clamp(min=1e-3)).max())
    out = f"max abs {float(d.max()):.2e} rel {rel:.2e}"
    if verdict:
        out += " OK" if bool((d <= FP32_TOL + FP32_TOL * want.abs()).all()) else " FAIL"
    return out


def match(a: torch.Tensor, b: torch.Tensor) -> str:
    return f"{100 * float((a == b).float().mean()):.4f}%"


def first_dup(xr: torch.Tensor, c: int) -> None:
    cent = kmeans_triton.init_centroids(xr, c, 0).to(torch.bfloat16)
    old = bench_ms(lambda: kmeans_variants.first_duplicate_torch(cent))
    new = bench_ms(lambda: kmeans_triton.first_duplicate(cent))
    same = torch.equal(
        kmeans_variants.first_duplicate_torch(cent), kmeans_triton.first_duplicate(cent)
    )
    say(f"  first_duplicate: torch {old:.3f} ms | triton {new:.3f} ms | equal {same}")


def assign(xr: torch.Tensor, c: int) -> tuple[torch.Tensor, torch.Tensor]:
    cent = kmeans_triton.init_centroids(xr, c, 0) * 1.001  # fp32 values off the bf16 grid
    c16 = cent.to(torch.bfloat16)
    want32 = kmeans_ref.assign(xr.float(), cent)
    want16 = kmeans_ref.assign(xr.float(), c16.float())
    t32 = bench_ms(lambda: kmeans_triton.assign(xr, cent))
    t3 = bench_ms(lambda: kmeans_triton.assign(xr, cent, BF16X3))
    t16 = bench_ms(lambda: kmeans_triton.assign(xr, c16))
    t16old = bench_ms(lambda: kmeans_triton.assign(xr, c16, "tf32x3"))
    m32 = match(kmeans_triton.assign(xr, cent), want32)
    m3 = match(kmeans_triton.assign(xr, cent, BF16X3), want32)
    m16 = match(kmeans_triton.assign(xr, c16), want16)
    m16old = match(kmeans_triton.assign(xr, c16, "tf32x3"), want16)
    p32 = kmeans_triton.default_precision(xr, cent)
    say(f"  assign fp32 cent: {p32} {t32:.3f} ms ({m32} = ref) | bf16x3 {t3:.3f} ms ({m3})")
    say(
        f"  assign bf16 cent: native {t16:.3f} ms ({m16} = ref) | tf32x3 {t16old:.3f} ms ({m16old})"
    )
    for bs, bc, nw, st in ASSIGN16_CONFIGS if CUDA else ():
        ms = bench_ms(partial(kmeans_triton.assign, xr, c16, None, bs, bc, None, nw, st))
        say(f"    native bs={bs} bc={bc} w={nw} st={st}: {ms:.3f} ms")
    for bs, bc, nw, st in BF16X3_CONFIGS if CUDA else ():
        ms = bench_ms(partial(kmeans_triton.assign, xr, cent, BF16X3, bs, bc, None, nw, st))
        say(f"    bf16x3 bs={bs} bc={bc} w={nw} st={st}: {ms:.3f} ms")
    return kmeans_triton.assign(xr, cent), cent


def update(xr: torch.Tensor, ids: torch.Tensor, prev: torch.Tensor, rows12: bool) -> None:
    for x in (xr, xr.float()) if rows12 else (xr,):
        tag = "bf16" if x.dtype == torch.bfloat16 else "fp32"
        t_sort = bench_ms(lambda x=x: kmeans_variants.update_sort(x, ids, prev))
        t_new = bench_ms(lambda x=x: kmeans_triton.update(x, ids, prev))
        old, new = (
            kmeans_variants.update_sort(x, ids, prev)[0],
            kmeans_triton.update(x, ids, prev)[0],
        )
        again = torch.equal(new, kmeans_triton.update(x, ids, prev)[0])
        say(f"  update x {tag}: sort {t_sort:.3f} ms | onehot {t_new:.3f} ms | rerun same {again}")
        say(f"    onehot vs sort: {diff(new, old)}")
        if rows12:
            say(f"    onehot vs ref:  {diff(new, kmeans_ref.update(x.float(), ids, prev)[0])}")
    for bc, bs, nw, st in UPDATE_CONFIGS if CUDA else ():
        ms = bench_ms(partial(kmeans_triton.update, xr, ids, prev, bc, bs, None, nw, st))
        say(f"    onehot bc={bc} bs={bs} w={nw} st={st}: {ms:.3f} ms")
    default = kmeans_triton.update(xr, ids, prev)[0]
    for parts in (1, 6, 44) if CUDA and rows12 else ():  # default: TARGET_PROGRAMS
        run = partial(kmeans_triton.update, xr, ids, prev, parts=parts)
        d = diff(run()[0], default, verdict=False)
        say(f"    onehot parts={parts}: {bench_ms(run):.3f} ms (vs default parts: {d})")


def encode(x: torch.Tensor, x2: torch.Tensor, c: int) -> None:
    specs = {it: get_spec("qvg-int2").with_kmeans(iters=it, centroids=c) for it in (1, 2)}
    parts = []
    for it, spec in specs.items():
        parts.append(f"cold {it} it {bench_ms(lambda s=spec: qvg_triton.encode(x, s)):.3f} ms")
    prev = qvg_triton.encode(x, specs[1])
    warm = bench_ms(lambda: qvg_triton.encode(x2, specs[1], warm=prev))
    say(f"  encode qvg-int2: {' | '.join(parts)} | warm 1 it {warm:.3f} ms")


def profile(x: torch.Tensor, x2: torch.Tensor, c: int) -> None:
    spec = get_spec("qvg-int2").with_kmeans(iters=1, centroids=c)
    prev = qvg_triton.encode(x, spec)
    qvg_triton.encode(x2, spec, warm=prev)  # compiled and cached
    acts = [torch.profiler.ProfilerActivity.CPU]
    acts += [torch.profiler.ProfilerActivity.CUDA] if CUDA else []
    with torch.profiler.profile(activities=acts) as prof:
        qvg_triton.encode(x2, spec, warm=prev)
        if CUDA:
            torch.cuda.synchronize()
    key = "self_device_time_total" if CUDA else "self_cpu_time_total"
    say(prof.key_averages().table(sort_by=key, row_limit=16, max_name_column_width=48))


def main() -> None:
    t0 = time.time()
    say(f"{torch.cuda.get_device_name() if CUDA else 'CPU (interpreter)'} smoke={SMOKE}")
    data = shapes()
    for name, (x, x2, c) in data.items():
        b, h, s, d = x.shape
        xr = x.reshape(b * h, s, d)
        say(f"{name}: x [{b * h}, {s}, {d}] bf16, C={c}  ({time.time() - t0:.0f} s)")
        first_dup(xr, c)
        ids, cent = assign(xr, c)
        update(xr, ids, cent, rows12=name == "A")
        encode(x, x2, c)
    x, x2, c = data["B"]
    say(f"profile: one warm 1-iteration encode of B  ({time.time() - t0:.0f} s)")
    profile(x, x2, c)
    say(f"done in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
