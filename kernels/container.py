"""The encoded container: every byte a codec stores, with exact sizes and (de)serialisation.

`Encoded.tensors` holds everything decode needs (codes, scales, zeros, scale-of-scales, per
stage centroids and cluster ids); `nbytes` is the sum of their storage bytes, so
`compression_ratio` = bf16 bytes of the original / nbytes counts all metadata.

Wire format of `to_bytes()` (for offload to CPU/disk and recovery):

    b"QVGKV1\\n" | u32 header length | JSON header | tensor bytes in header order

The header names the codec spec (all fields), the original shape and role, and per tensor its
name, dtype and shape.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import struct
from dataclasses import dataclass

import torch

from .spec import CodecSpec, KMeansSpec, Method, QuantSpec, ScaleDtype

MAGIC = b"QVGKV1\n"

_DTYPES = {
    str(d): d
    for d in (
        torch.uint8,
        torch.int8,
        torch.int16,
        torch.int32,
        torch.int64,
        torch.float16,
        torch.bfloat16,
        torch.float32,
        torch.float8_e4m3fn,
    )
}


@dataclass
class Encoded:
    """One encoded tensor [B, H, S, D] (K or V of one layer span)."""

    spec: CodecSpec
    shape: tuple[int, int, int, int]
    role: str  # "k" or "v": KIVI codes keys and values differently
    tensors: dict[str, torch.Tensor]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    @property
    def numel(self) -> int:
        b, h, s, d = self.shape
        return b * h * s * d

    @property
    def compression_ratio(self) -> float:
        """bf16 bytes of the original over stored bytes (all metadata counted)."""
        return 2 * self.numel / self.nbytes

    @property
    def device(self) -> torch.device:
        return next(iter(self.tensors.values())).device

    def to(self, device: torch.device | str) -> Encoded:
        moved = {k: v.to(device) for k, v in self.tensors.items()}
        return dataclasses.replace(self, tensors=moved)

    def to_bytes(self) -> bytes:
        header = {
            "spec": spec_to_dict(self.spec),
            "shape": list(self.shape),
            "role": self.role,
            "tensors": [[k, str(v.dtype), list(v.shape)] for k, v in self.tensors.items()],
        }
        head = json.dumps(header).encode()
        body = b"".join(_raw(v) for v in self.tensors.values())
        return MAGIC + struct.pack("<I", len(head)) + head + body

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> Encoded:
        data = memoryview(data)
        if bytes(data[: len(MAGIC)]) != MAGIC:
            raise ValueError("not an encoded KV blob (bad magic): was it written by to_bytes()?")
        (n,) = struct.unpack("<I", data[len(MAGIC) : len(MAGIC) + 4])
        pos = len(MAGIC) + 4
        header = json.loads(bytes(data[pos : pos + n]))
        pos += n
        tensors = {}
        for name, dtype, shape in header["tensors"]:
            t = torch.empty(shape, dtype=_DTYPES[dtype])
            size = t.numel() * t.element_size()
            if pos + size > len(data):
                raise ValueError(f"truncated encoded KV blob: tensor {name!r} needs {size} bytes")
            t.view(torch.uint8).view(-1).copy_(
                torch.frombuffer(bytearray(data[pos : pos + size]), dtype=torch.uint8)
            )
            tensors[name] = t
            pos += size
        if pos != len(data):
            raise ValueError(f"encoded KV blob has {len(data) - pos} trailing bytes")
        spec = spec_from_dict(header["spec"])
        return cls(spec, tuple(header["shape"]), header["role"], tensors)


def _raw(t: torch.Tensor) -> bytes:
    flat = t.detach().contiguous().cpu().view(-1)
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


def _jsonable(v):
    if isinstance(v, enum.Enum):
        return v.value
    if isinstance(v, torch.dtype):
        return str(v)
    return v


def spec_to_dict(spec: CodecSpec) -> dict:
    out: dict = {"name": spec.name, "method": spec.method.value}
    for key in ("quant", "kmeans"):
        sub = getattr(spec, key)
        out[key] = (
            None
            if sub is None
            else {f.name: _jsonable(getattr(sub, f.name)) for f in dataclasses.fields(sub)}
        )
    return out


def spec_from_dict(d: dict) -> CodecSpec:
    quant = kmeans = None
    if d.get("quant") is not None:
        q = dict(d["quant"])
        q["scale_dtype"] = ScaleDtype(q["scale_dtype"])
        quant = QuantSpec(**q)
    if d.get("kmeans") is not None:
        k = dict(d["kmeans"])
        k["centroid_dtype"] = _DTYPES[k["centroid_dtype"]]
        kmeans = KMeansSpec(**k)
    return CodecSpec(d["name"], Method(d["method"]), quant, kmeans)
