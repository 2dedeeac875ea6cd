"""`qvg-serve bench quality` on CPU: a short video, the reference and QVG INT2."""

from __future__ import annotations

import argparse
import json
import math

import pytest

pytest.importorskip("skimage")

from qvg_serve.bench import quality  # noqa: E402
from qvg_serve.bench.codec import load_kv  # noqa: E402


def test_quality_bench_small(tmp_path, capsys):
    p = argparse.ArgumentParser()
    quality.add_arguments(p)
    kv = tmp_path / "kv.safetensors"
    args = p.parse_args([
        "--frames", "9", "--codecs", "bf16", "qvg-int2", "--prompts", "a red circle bouncing",
        "--device", "cpu", "--sink-frames", "0", "--window-frames", "3", "--span-frames", "3",
        "--out", str(tmp_path), "--json", "--dump-kv", str(kv),
    ])  # fmt: skip
    assert quality.run(args) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["codec"] for r in rows] == ["bf16", "qvg-int2"]
    for r in rows:
        keys = {"codec", "ratio", "psnr_mean", "psnr_worst_window", "ssim_mean", "frames"}
        assert keys <= set(r) and r["frames"] == 9
    ref, q = rows
    assert ref["psnr_mean"] == 100.0 and ref["ssim_mean"] == 1.0
    assert math.isfinite(q["psnr_mean"]) and 15 < q["psnr_mean"] < 100, q["psnr_mean"]
    assert q["ratio"] > 3
    assert (tmp_path / "quality_drift.png").stat().st_size > 0
    assert json.loads((tmp_path / "quality.json").read_text())[1]["codec"] == "qvg-int2"
    k, v = load_kv(kv)
    assert k.shape == v.shape and k.shape[0] == 1 and k.shape[2] == 9 * 96
