"""`qvg-serve bench ladder --simulate`: the issue-13 scenario through scheduler/sim.py with the
engine's pool layout (no model, no tensors): BF16-only paging loses history, the QVG ladder
loses none; the sweep reports the most streams held at once without loss."""

from __future__ import annotations

import argparse
import json

from qvg_serve.bench import ladder


def run(capsys, *argv: str) -> list[dict]:
    parser = argparse.ArgumentParser()
    ladder.add_arguments(parser)
    assert ladder.run(parser.parse_args(["--simulate", "--json", *argv])) == 0
    return json.loads(capsys.readouterr().out)


def test_simulated_ladder_run_of_the_issue_scenario(capsys):
    rows = {r["mode"]: r for r in run(capsys, "--model", "tiny", "--streams", "8", "--chunks", "8")}
    assert all(r["simulated"] and r["completed"] == 8 for r in rows.values())
    assert rows["bf16"]["arena_bytes"] == rows["qvg"]["arena_bytes"]
    assert 0.49 < rows["qvg"]["arena_bytes"] / rows["qvg"]["bf16_need_bytes"] <= 0.5
    assert rows["bf16"]["drop"] + rows["bf16"]["preempt"] > 0  # the pressure is real
    assert (rows["qvg"]["drop"], rows["qvg"]["preempt"]) == (0, 0) and rows["qvg"]["encode"] > 0


def test_simulated_sweep_holds_more_streams_with_the_ladder(capsys):
    out = run(capsys, "--model", "tiny", "--chunks", "8", "--sweep", "--max-streams", "8",
              "--arena-bytes", str(24 << 20))  # fmt: skip
    held = {r["mode"]: r["most_resident_lossless"] for r in out}
    assert held["qvg"] >= 2 * held["bf16"] >= 2, out
