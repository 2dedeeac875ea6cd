"""Encoded container: exact bytes, (de)serialisation, clear errors on bad blobs."""

from __future__ import annotations

import pytest
import torch

from kernels import codec
from kernels.container import Encoded


def _enc(name="qvg-int2"):
    x = torch.randn(1, 2, 40, 64, generator=torch.Generator().manual_seed(0))
    return x, codec.encode(x, name)


@pytest.mark.parametrize("name", ["qvg-int2", "qvg-pro-int2", "kivi-int2", "fp8", "bf16"])
def test_bytes_roundtrip_is_bit_exact(name):
    _, enc = _enc(name)
    back = Encoded.from_bytes(enc.to_bytes())
    assert back.spec == enc.spec and back.shape == enc.shape and back.role == enc.role
    assert list(back.tensors) == list(enc.tensors)
    for k, t in enc.tensors.items():
        assert back.tensors[k].dtype == t.dtype
        assert torch.equal(back.tensors[k].view(torch.uint8), t.view(torch.uint8)), k
    assert torch.equal(codec.decode(back), codec.decode(enc))


def test_blob_holds_exactly_nbytes_of_tensor_data():
    _, enc = _enc()
    blob = enc.to_bytes()
    header_len = int.from_bytes(blob[7:11], "little")
    assert len(blob) - 11 - header_len == enc.nbytes


def test_bad_blobs_raise_clear_errors():
    _, enc = _enc()
    blob = enc.to_bytes()
    with pytest.raises(ValueError, match="bad magic"):
        Encoded.from_bytes(b"garbage" + blob)
    with pytest.raises(ValueError, match="truncated"):
        Encoded.from_bytes(blob[:-5])
    with pytest.raises(ValueError, match="trailing"):
        Encoded.from_bytes(blob + b"x")


def test_to_device_keeps_content():
    _, enc = _enc()
    moved = enc.to("cpu")
    assert moved.nbytes == enc.nbytes and moved.device.type == "cpu"
