"""Where a `tiny.dmd` step spends its time, by phase (GPU diagnostic; runs on the CPU too).

    python tools/dmd_step_profile.py [--steps 10] [tiny.dmd flags...]

Runs `qvg_serve.tiny.dmd` for a few steps after a warm-up, under torch.profiler, and prints per
step the wall time and, for each phase the trainer labels (`dmd.rollout`, `dmd.generator_forward`,
`dmd.scores`, `dmd.regression_forward`, `dmd.generator_backward`, `dmd.fake_forward`,
`dmd.fake_backward`), its host time and the device time of the kernels it launched. A phase
whose device time is far below its host time is bound by Python and kernel launches. Phases of
the generator step appear on one step in `--ratio`; the table gives how many times each ran.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qvg_serve.tiny import dmd  # noqa: E402
from tools.tiny_step_profile import profiled_args, sync  # noqa: E402


def phase_table(events, steps: int) -> list[tuple[str, int, float, float]]:
    """(label, calls, host ms per step, device ms per step) of the trainer's `dmd.*` labels."""
    rows = {}
    for e in events:
        if e.key.startswith("dmd."):
            calls, host, dev = rows.get(e.key, (0, 0.0, 0.0))
            rows[e.key] = (calls + e.count, host + e.cpu_time_total, dev + e.device_time_total)
    return [(k, c, h / steps / 1e3, d / steps / 1e3) for k, (c, h, d) in sorted(rows.items())]


def main(argv=None) -> list[tuple[str, int, float, float]]:
    steps, base = profiled_args(sys.argv[1:] if argv is None else argv, 10)
    dmd.main([*base, "--steps", "2"])  # warm-up: allocator, cuBLAS handles, kernels
    sync()
    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    t0 = time.time()
    with profile(activities=activities) as prof:
        log = dmd.main([*base, "--steps", str(steps)])
        sync()
    ran = log["steps"]  # --smoke fixes its own step count
    wall = (time.time() - t0) / ran
    table = phase_table(prof.key_averages(), ran)
    print(f"{ran} steps, wall {wall * 1e3:.0f} ms per step (profiled)")
    print(f"{'phase':26s} {'calls':>5s} {'host ms/step':>13s} {'device ms/step':>15s}")
    for label, calls, host, dev in table:
        print(f"{label:26s} {calls:5d} {host:13.1f} {dev:15.1f}")
    return table


if __name__ == "__main__":
    main()
