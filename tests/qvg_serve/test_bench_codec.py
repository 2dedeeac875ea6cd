"""`qvg-serve bench codec` at a tiny size: the JSON contract and sane numbers."""

from __future__ import annotations

import json

import pytest
import torch

from qvg_serve.cli import main

TINY = ["--frames", "2", "--grid", "6", "10", "--heads", "2", "--head-dim", "64", "--repeat", "1"]


def test_json_rows_have_the_documented_keys(capsys):
    assert main(["bench", "codec", *TINY, "--json", "--codecs", "rtn-int2", "qvg-int2"]) == 0
    rows = json.loads(capsys.readouterr().out)
    names = [r["codec"] for r in rows]
    assert names[:2] == ["rtn-int2", "qvg-int2"]
    assert any("warm" in n for n in names)  # centroid caching rows
    for r in rows:
        for key in ("codec", "ratio", "k_rel_mse", "v_rel_mse", "encode_ms", "decode_ms"):
            assert key in r
    by = {r["codec"]: r for r in rows}
    assert by["qvg-int2"]["k_rel_mse"] < by["rtn-int2"]["k_rel_mse"]
    assert by["rtn-int2"]["ratio"] == pytest.approx(16 / (2 + 16 / 64), rel=1e-6)


def test_user_kv_file(tmp_path, capsys):
    k = torch.randn(1, 2, 40, 64)
    path = tmp_path / "kv.pt"
    torch.save({"k": k, "v": k * 2}, path)
    assert (
        main(
            [
                "bench",
                "codec",
                "--kv",
                str(path),
                "--json",
                "--codecs",
                "fp8",
                "--no-warm",
                "--repeat",
                "1",
            ]
        )
        == 0
    )
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["shape"] == [1, 2, 40, 64]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ({"k": torch.zeros(2, 3)}, "'k' and 'v'"),
        ({"k": torch.zeros(1, 1, 2, 64), "v": torch.zeros(1, 1, 3, 64)}, "differ"),
        ({"k": torch.zeros(2, 64), "v": torch.zeros(2, 64)}, r"\[B, H, S, D\]"),
    ],
)
def test_bad_kv_files_get_clear_errors(tmp_path, capsys, content, match):
    path = tmp_path / "bad.pt"
    torch.save(content, path)
    assert main(["bench", "codec", "--kv", str(path), "--codecs", "fp8"]) == 2
    assert match.replace("\\", "") in capsys.readouterr().err or pytest.fail("no clear error")


def test_unreadable_and_missing_files(tmp_path, capsys):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a file format")
    assert main(["bench", "codec", "--kv", str(junk)]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert main(["bench", "codec", "--kv", str(tmp_path / "nope.pt")]) == 2
    assert "no such file" in capsys.readouterr().err
