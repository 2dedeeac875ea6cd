"""The paged-read sweep (tools/read_sweep.py) runs end to end at tiny shapes on the CPU: every
variant and tile is timed, agrees with the per_head default bit for bit, and each (frames,
format) group names its fastest config."""

from __future__ import annotations

import torch

from tools import read_sweep


def test_smoke_sweep_times_every_config_and_checks_it(capsys):
    args = read_sweep.parse(["--smoke", "--device", "cpu"])
    rows = read_sweep.run(args)
    out = capsys.readouterr().out
    groups = {(r.frames, r.fmt) for r in rows}
    assert groups == {(3, f) for f in ("bf16", "qvg-int2", "qvg-int4")}
    assert {r.config.variant for r in rows} == {"per_head", "shared"}
    assert len(rows) == 3 * 2 * 2  # formats x variants x block sizes
    assert all(r.diff == 0 and r.ms > 0 for r in rows)
    assert out.count("* best") == 2 * len(groups)  # after each group and in the summary


def test_diff_counts_unwritten_rows_as_infinite():
    want = torch.zeros(2, 3)
    ws = want.clone()
    ws[1, 2] = float("nan")
    assert read_sweep._diff(ws, want) == float("inf")
    ws[1, 2] = 0.5
    assert read_sweep._diff(ws, want) == 0.5
