"""`qvg-serve demo` end to end at a small size: MP4s, memory.json and memory.png written."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("ray.serve")


def test_demo_writes_videos_and_memory_report(tmp_path):
    out = tmp_path / "demo"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "qvg_serve.cli",
            "demo",
            "--streams",
            "2",
            "--frames",
            "24",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    from qvg_serve.serve.video import read_mp4_frames

    assert [read_mp4_frames(out / f"stream_{i:02d}.mp4") for i in range(2)] == [24, 24]
    report = json.loads((out / "memory.json").read_text())
    assert report["streams"] == 2 and report["samples"]
    assert report["peak_bf16_equivalent_bytes"] >= report["peak_held_bytes"] > 0
    assert (out / "memory.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "frames" in done.stderr  # live progress lines
