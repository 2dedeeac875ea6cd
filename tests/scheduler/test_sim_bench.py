"""`qvg-serve bench scheduler` (the module; the CLI registers it): output keys, no torch."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from qvg_serve.bench import scheduler as bench


def test_bench_prints_the_step_times_and_the_simulated_capacity(capsys):
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--streams", "16", "--steps", "50", "--json", "--capacity"])
    assert bench.run(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["streams"] == 16 and out["steps_timed"] == 50
    assert 0 < out["step_p50_ms"] <= out["step_p99_ms"]
    rows = {
        (r["frames_per_stream"], r["paging"]): r["streams_held"] for r in out["capacity_simulated"]
    }
    # Self-Forcing-1.3B pages in 70 GiB: BF16 holds 12 streams of 21 frames (6.0 GB each) and
    # one of 240; the ladder (sink + window BF16, the rest INT2) holds more of both.
    assert rows[(21, "bf16 only")] == 12 and rows[(240, "bf16 only")] == 1
    assert rows[(21, "qvg ladder")] >= 2 * rows[(21, "bf16 only")]
    assert rows[(240, "qvg ladder")] >= 5
    assert "SIMULATED" in out["capacity_note"]


def test_bench_module_never_imports_torch():
    code = (
        "import sys, qvg_serve.bench.scheduler; "
        "print([m for m in ('torch', 'numpy', 'triton', 'ray') if m in sys.modules])"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip().splitlines()[-1] == "[]"
