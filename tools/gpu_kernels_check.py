"""GPU check of the QVG Triton kernels against the reference at full size (not a test).

    python tools/gpu_kernels_check.py            # prints a table; writes $OUT/kernels.json

On CUDA, for K/V-like data [1, 12, 37440, 128] bf16 (clustered tokens + noise):
  * encode: triton vs reference per preset: code / id match rates, relative MSE of each, ms;
  * decode of the reference's encoding: max |triton - ref|, ms, GB/s (bytes read + written) and
    fraction of the bf16 clone() bandwidth, for a small sweep of (join, BLOCK_S, num_warps)
    and for the `out=` workspace-view variant;
  * k-means assign with tl.dot precision ieee vs tf32x3 (time, id agreement).
Designed to finish in well under 2 minutes on an H100; every section reports its own errors.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kernels import kmeans_ref, kmeans_triton, qvg_ref, qvg_triton  # noqa: E402
from kernels.spec import get_spec  # noqa: E402

SHAPE = (1, 12, 37440, 128)
PRESETS = ["qvg-int2", "qvg-int4", "qvg-pro-int2", "qvg-int2-plain"]
SWEEP = [(j, bs, nw) for j in (True, False) for bs, nw in ((32, 4), (64, 4), (64, 8), (128, 8))]


def kv_like(seed: int = 0) -> torch.Tensor:
    b, h, s, d = SHAPE
    g = torch.Generator(device="cuda").manual_seed(seed)
    centers = torch.randn(b * h, 64, d, generator=g, device="cuda") * 2
    ids = torch.randint(0, 64, (b * h, s), generator=g, device="cuda")
    x = torch.gather(centers, 1, ids[..., None].expand(-1, -1, d))
    x = x + 0.5 * torch.randn(b * h, s, d, generator=g, device="cuda")
    return x.reshape(SHAPE).to(torch.bfloat16)


def bench_ms(fn) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median"))


def rel_mse(x: torch.Tensor, y: torch.Tensor) -> float:
    return float((x.float() - y.float()).square().sum() / x.float().square().sum())


def match(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a == b).float().mean())


def check_encode(x: torch.Tensor, name: str) -> dict:
    spec = get_spec(name)
    got, want = qvg_triton.encode(x, spec), qvg_ref.encode(x, spec)
    row = {
        "preset": name,
        "layout_equal": all(
            (got.tensors[k].dtype, got.tensors[k].shape) == (v.dtype, v.shape)
            for k, v in want.tensors.items()
        )
        and list(got.tensors) == list(want.tensors),
    }
    row["codes_match"] = match(got.tensors["codes"], want.tensors["codes"])
    row["ids0_match"] = match(got.tensors["ids.0"], want.tensors["ids.0"])
    row["rel_mse_triton"] = rel_mse(x, qvg_ref.decode(got))
    row["rel_mse_ref"] = rel_mse(x, qvg_ref.decode(want))
    row["ratio"] = want.compression_ratio
    row["encode_ms_triton"] = bench_ms(lambda: qvg_triton.encode(x, spec))
    row["encode_ms_ref"] = bench_ms(lambda: qvg_ref.encode(x, spec))
    return row


def check_decode(x: torch.Tensor, name: str, clone_ms: float) -> list[dict]:
    from tools import decode_variants  # the join switch lives with the sweep alternatives

    enc = qvg_ref.encode(x, get_spec(name).with_kmeans(iters=1))
    want = qvg_ref.decode(enc, torch.float32)
    moved = enc.nbytes + x.numel() * 2
    rows = []
    t = enc.tensors
    ks = enc.spec.kmeans
    cent = torch.stack([t[f"centroids.{i}"] for i in range(ks.stages)])
    ids = torch.stack([t[f"ids.{i}"] for i in range(ks.stages)])
    args = (t["codes"], t["scales"], t.get("zeros"), t.get("scale_of_scales"), cent, ids)
    for join, bs, nw in SWEEP:

        def run(join=join, bs=bs, nw=nw):
            return decode_variants.decode(
                *args, enc.spec.quant, join=join, block_s=bs, num_warps=nw
            )

        err = float((run().float() - want).abs().max())
        ms = bench_ms(run)
        rows.append(
            {
                "preset": name,
                "variant": f"join={join} BLOCK_S={bs} warps={nw}",
                "max_abs_err": err,
                "ms": ms,
                "GBps": moved / ms / 1e6,
                "frac_copy": clone_ms / ms * moved / (4 * x.numel()),
            }
        )
    ws = torch.empty(
        SHAPE[0], SHAPE[1], SHAPE[2] + 1000, SHAPE[3], dtype=torch.bfloat16, device="cuda"
    )
    view = ws[:, :, 500 : 500 + SHAPE[2]]
    ms = bench_ms(lambda: qvg_triton.decode(enc, out=view))
    rows.append(
        {
            "preset": name,
            "variant": "qvg_triton.decode(out=view) default",
            "max_abs_err": float((view.float() - want).abs().max()),
            "ms": ms,
            "GBps": moved / ms / 1e6,
            "frac_copy": clone_ms / ms * moved / (4 * x.numel()),
        }
    )
    ms = bench_ms(lambda: qvg_ref.decode(enc))
    rows.append(
        {
            "preset": name,
            "variant": "reference (torch)",
            "max_abs_err": 0.0,
            "ms": ms,
            "GBps": moved / ms / 1e6,
            "frac_copy": clone_ms / ms * moved / (4 * x.numel()),
        }
    )
    return rows


def check_assign(x: torch.Tensor) -> dict:
    r = x.reshape(-1, SHAPE[2], SHAPE[3])
    cent = kmeans_ref.init_centroids(r.float(), 256, 0)
    want = kmeans_ref.assign(r.float(), cent)
    out = {}
    for prec in ("ieee", "tf32x3"):
        got = kmeans_triton.assign(r, cent, prec)
        out[prec] = {
            "ids_match": match(got, want),
            "ms": bench_ms(lambda p=prec: kmeans_triton.assign(r, cent, p)),
        }
    out["reference_ms"] = bench_ms(lambda: kmeans_ref.assign(r.float(), cent))
    return out


def section(report: dict, key: str, fn) -> None:
    t0 = time.time()
    try:
        report[key] = fn()
    except Exception:  # report and go on: one broken kernel must not hide the others
        report[key] = {"error": traceback.format_exc()}
        print(f"[{key}] FAILED\n{report[key]['error']}")
    print(f"[{key}] {time.time() - t0:.1f}s")


def main() -> None:
    if not torch.cuda.is_available():
        sys.exit("needs CUDA")
    report: dict = {
        "device": torch.cuda.get_device_name(),
        "shape": SHAPE,
        "torch": torch.__version__,
    }
    x = kv_like()
    clone_ms = bench_ms(lambda: x.clone())
    report["clone_ms"] = clone_ms
    report["copy_GBps"] = 4 * x.numel() / clone_ms / 1e6
    print(
        f"{report['device']}: bf16 clone {clone_ms * 1e3:.1f} us = {report['copy_GBps']:.0f} GB/s"
    )
    section(
        report,
        "decode",
        lambda: (
            check_decode(x, "qvg-int2", clone_ms) + check_decode(x, "qvg-pro-int2", clone_ms)[:2]
        ),
    )
    section(report, "assign", lambda: check_assign(x))
    section(report, "encode", lambda: [check_encode(x, n) for n in PRESETS])
    for row in report.get("decode", []) if isinstance(report.get("decode"), list) else []:
        print(
            f"decode {row['preset']:14s} {row['variant']:38s} {row['ms'] * 1e3:8.1f} us "
            f"{row['GBps']:7.0f} GB/s {100 * row['frac_copy']:5.1f}% of copy  "
            f"max|err| {row['max_abs_err']:.2e}"
        )
    print("assign", json.dumps(report.get("assign")))
    for row in report.get("encode", []) if isinstance(report.get("encode"), list) else []:
        print(
            "encode "
            + " ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
            )
        )
    if os.environ.get("OUT"):
        path = Path(os.environ["OUT"]) / "kernels.json"
        path.write_text(json.dumps(report, indent=1))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
