"""`qvg-serve bench capacity`: exact, CPU-only, the documented JSON keys."""

from __future__ import annotations

import json

from qvg_serve.bench.capacity import MODELS, frames_fit
from qvg_serve.cli import main
from qvg_serve.engine import kv_format as kf


def test_json_has_one_object_per_format(capsys):
    assert (
        main(["bench", "capacity", "--model", "self-forcing-1.3b", "--budget-gib", "40", "--json"])
        == 0
    )
    rows = {r["format"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) >= {"bf16", "qvg-int2", "qvg-int4"}
    for r in rows.values():
        assert {"format", "bytes_per_frame", "frames_fit"} <= set(r)
    sf = MODELS["self-forcing-1.3b"]
    assert rows["bf16"]["bytes_per_frame"] == kf.page_bytes("bf16", sf) == 287_539_200
    # 40 GiB of whole 287.5 MB bf16 pages
    assert rows["bf16"]["frames_fit"] == 40 * 2**30 // 287_539_200
    assert rows["qvg-int2"]["frames_fit"] >= 6.5 * rows["bf16"]["frames_fit"]


def test_frames_fit_respects_the_budget():
    kv = kf.KVShape(layers=2, heads=2, head_dim=64, page_tokens=256)
    page2, book2 = kf.page_bytes("qvg-int2", kv), kf.codebook_bytes("qvg-int2", kv)
    budget = 50 * kf.page_bytes("bf16", kv)
    n = frames_fit(kv, "qvg-int2", budget, sink=1, window=1, span=8)
    cold = n - 2
    used = 2 * kf.page_bytes("bf16", kv) + cold * page2 + -(-cold // 8) * book2
    assert used <= budget
    assert n > 3 * frames_fit(kv, "bf16", budget, 1, 1, 8)  # small spans: codebooks cost


def test_bench_attention_runs_tiny(capsys):
    args = [
        "bench",
        "attention",
        "--history-frames",
        "2",
        "--sink-frames",
        "1",
        "--grid",
        "4",
        "4",
        "--formats",
        "qvg-int2",
        "--chunk-frames",
        "1",
        "--heads",
        "2",
        "--head-dim",
        "64",
        "--repeat",
        "1",
        "--json",
    ]
    assert main(args) == 0
    rows = json.loads(capsys.readouterr().out)
    paths = ["sdpa-dense", "dense-sf"] + [
        f"{row}-{fmt}" for fmt in ("bf16", "qvg-int2") for row in ("read", "pool", "ahead")
    ]
    assert [r["path"] for r in rows] == paths
    assert {r["layers"] for r in rows if r["path"].startswith(("pool", "ahead"))} == {4}
    assert all(r["ms"] > 0 and r["history_tokens"] == 32 for r in rows)
    assert rows[0]["vs_sdpa"] == 1.0 and rows[1]["vs_dense_sf"] == 1.0


def test_bench_e2e_runs_tiny(capsys):
    args = [
        "bench",
        "e2e",
        "--model",
        "tiny",
        "--device",
        "cpu",
        "--history",
        "4",
        "--formats",
        "bf16",
        "qvg-int2",
        "--streams",
        "2",
        "--batch-history",
        "4",
        "--repeat",
        "1",
        "--json",
    ]
    assert main(args) == 0
    rows = json.loads(capsys.readouterr().out)
    chunk = next(r for r in rows if r["bench"] == "chunk")
    batch = next(r for r in rows if r["bench"] == "batch")
    assert chunk["history_frames"] == 4 and chunk["dense_s"] > 0 and chunk["bf16_s"] > 0
    assert chunk["qvg-int2_vs_dense"] == chunk["qvg-int2_s"] / chunk["dense_s"]
    assert (
        batch["streams"] == 2 and batch["qvg-int2_batched_s"] > 0 and batch["dense_batched_s"] > 0
    )
