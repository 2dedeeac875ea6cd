"""Host syncs and time of one QVG encode through the codec API (GPU diagnostic, not a test).

    python tools/encode_syncs.py [--codec qvg-int2@2it]

Lists every host sync `kernels.codec.encode` makes (torch.cuda.set_sync_debug_mode, with the
calling line), then times the API against `qvg_triton.encode` called directly (do_bench
medians, same video-like bf16 tensor [1, 12, 37440, 128]).
"""

from __future__ import annotations

import argparse
import sys
import traceback
import warnings
from pathlib import Path

import torch
import triton.testing

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kernels import codec, qvg_triton  # noqa: E402
from kernels.spec import get_spec  # noqa: E402
from tools.decode_sweep import kv_like  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--codec", default="qvg-int2@2it")
    args = p.parse_args()
    x = kv_like()
    base, _, iters = args.codec.partition("@")
    spec = get_spec(base)
    if iters:
        spec = spec.with_kmeans(iters=int(iters.removesuffix("it")))
    codec.encode(x, spec)  # compile
    torch.cuda.synchronize()
    seen: list[str] = []

    def show(message, category, filename, lineno, file=None, line=None):
        here = [
            f"{Path(f.filename).name}:{f.lineno} {f.name}"
            for f in traceback.extract_stack()[:-1]
            if "/kernels/" in f.filename or "/qvg_serve/" in f.filename
        ]
        seen.append(" <- ".join(reversed(here[-3:])))

    old = warnings.showwarning
    warnings.simplefilter("always")
    torch.cuda.set_sync_debug_mode("warn")  # warns once that the mode is a prototype: not a sync
    warnings.showwarning = show
    try:
        codec.encode(x, spec, check_finite=False)  # as the pool calls it: no sync expected
        n_pool = len(seen)
        codec.encode(x, spec)  # the API: one sync, the NaN/Inf verdict after the queued encode
    finally:
        torch.cuda.set_sync_debug_mode(0)
        warnings.showwarning = old
    print(
        f"{args.codec}: {n_pool} host syncs in codec.encode(check_finite=False), "
        f"{len(seen) - n_pool} in codec.encode"
    )
    for s in seen:
        print("  sync at", s)

    def bench(fn) -> float:
        return float(triton.testing.do_bench(fn, warmup=10, rep=60, return_mode="median"))

    for _ in range(2):
        api = bench(lambda: codec.encode(x, spec))
        direct = bench(lambda: qvg_triton.encode(x, spec))
        print(f"codec.encode {api:.3f} ms   qvg_triton.encode {direct:.3f} ms", flush=True)


if __name__ == "__main__":
    main()
