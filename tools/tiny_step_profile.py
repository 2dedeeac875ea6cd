"""Where one tiny-model training step spends its time (GPU diagnostic, not a test).

    python tools/tiny_step_profile.py [--steps 12] [trainer flags...]

Runs `qvg_serve.tiny.train` for a few steps under torch.profiler and prints the step's wall
time, the GPU kernel time per step (CPU-bound when far below the wall time), and the ops that
cost the most CPU and GPU time. Other flags go to the trainer (defaults: stage 4's recipe).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qvg_serve.tiny import train  # noqa: E402


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def profiled_args(argv, steps: int) -> tuple[int, list[str]]:
    """(--steps N taken out of `argv`, else `steps`; the trainer's arguments: a scratch
    --out, no saves or logs in between, then the rest of `argv`)."""
    argv = list(argv)
    if "--steps" in argv:
        i = argv.index("--steps")
        steps = int(argv[i + 1])
        del argv[i : i + 2]
    out = tempfile.mkdtemp()
    return steps, ["--out", out, "--save-every", "1e9", "--log-every", "1000", *argv]


def main() -> None:
    steps, base = profiled_args(sys.argv[1:], 12)
    train.main([*base, "--steps", "3"])  # warm-up: allocator, cuBLAS handles, kernels
    sync()
    t0 = time.time()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        train.main([*base, "--steps", str(steps)])
        sync()
    wall = (time.time() - t0) / steps
    ev = prof.key_averages()
    gpu_us = sum(e.self_device_time_total for e in ev) / steps
    n_ops = sum(e.count for e in ev if e.key.startswith("aten::")) / steps
    print(f"per step: wall {wall * 1e3:.0f} ms (profiled), GPU kernels {gpu_us / 1e3:.0f} ms, "
          f"aten ops {n_ops:.0f}")  # fmt: skip
    print(ev.table(sort_by="self_device_time_total", row_limit=25))
    print(ev.table(sort_by="self_cpu_time_total", row_limit=25))


if __name__ == "__main__":
    main()
