"""`qvg-serve generate`: playable MP4s, one per prompt, clear errors."""

from __future__ import annotations

import pytest
import torch

from qvg_serve.cli import main
from qvg_serve.generate import chunks_for
from qvg_serve.models import HashedWordEncoder
from qvg_serve.serve.video import read_mp4_frames, write_mp4


def test_generate_writes_one_playable_mp4_per_prompt(tmp_path, capsys):
    out = tmp_path / "videos"
    rc = main(
        [
            "generate",
            "--prompt",
            "a red circle bouncing on black",
            "--prompt",
            "a blue square moving left on gradient",
            "--frames",
            "14",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert rc == 0
    files = sorted(out.glob("*.mp4"))
    assert [f.name for f in files] == ["video_00.mp4", "video_01.mp4"]
    assert [read_mp4_frames(f) for f in files] == [14, 14]


def test_generate_rejects_bad_input(tmp_path, capsys):
    assert main(["generate", "--prompt", "...", "--out", str(tmp_path), "--quiet"]) == 2
    assert "no words" in capsys.readouterr().err
    assert (
        main(
            [
                "generate",
                "--prompt",
                "x",
                "--out",
                str(tmp_path),
                "--weights",
                str(tmp_path / "missing.safetensors"),
                "--quiet",
            ]
        )
        == 2
    )
    assert "no such file" in capsys.readouterr().err


def test_generate_names_unknown_words_and_suggests_known_ones(tmp_path, capsys):
    rc = main(["generate", "--prompt", "a red fox in snow", "--out", str(tmp_path), "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "unknown words 'fox'" in err and "'snow' (did you mean" in err
    assert not list(tmp_path.glob("*.mp4"))


def test_vocabulary_check_and_open_vocabulary():
    enc = HashedWordEncoder(8, 4, vocabulary=["a", "red", "circle", "bouncing", "on", "black"])
    assert enc.unknown_words("A RED circel, bouncing on blak blak") == ["circel", "blak"]
    assert enc.suggestions("circel")[0] == "circle"
    with pytest.raises(ValueError, match=r"'circel' \(did you mean 'circle'\?\)"):
        enc.encode(["a red circel"])
    assert enc.encode(["a red circle bouncing on black"]).shape == (1, 8, 4)
    open_enc = HashedWordEncoder(8, 4)  # no vocabulary: every word is accepted
    assert open_enc.unknown_words("a red fox") == []
    assert open_enc.encode(["a red fox"]).shape == (1, 8, 4)


def test_chunks_for_frames():
    assert chunks_for(1, 3) == 1 and chunks_for(12, 3) == 1 and chunks_for(13, 3) == 2
    with pytest.raises(ValueError):
        chunks_for(0, 3)


def test_text_encoder_is_deterministic_and_word_based():
    enc = HashedWordEncoder(8, 16)
    a, b = enc.encode(["Red ball", "red  BALL!"])
    assert torch.equal(a, b)
    assert not torch.equal(enc.encode(["red"])[0, 0], enc.encode(["blue"])[0, 0])
    assert torch.equal(HashedWordEncoder(8, 16).word("cat"), enc.word("cat"))


def test_write_mp4_checks_input(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_mp4(torch.zeros(2, 8, 8, 3), tmp_path / "x.mp4")
    path = write_mp4(torch.zeros(3, 7, 9, 3, dtype=torch.uint8), tmp_path / "odd.mp4")
    assert read_mp4_frames(path) == 3


def test_mp4_is_faststart(tmp_path):
    """The moov atom (index) precedes mdat: browsers play it while it downloads."""
    data = write_mp4(torch.zeros(4, 8, 8, 3, dtype=torch.uint8), tmp_path / "f.mp4").read_bytes()
    assert 0 <= data.find(b"moov") < data.find(b"mdat"), (data.find(b"moov"), data.find(b"mdat"))
    assert read_mp4_frames(tmp_path / "f.mp4") == 4
