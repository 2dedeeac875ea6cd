"""Baseline KV codecs behind the same Encoded API, so every comparison is one harness.

bf16     values as bf16 (the uncompressed cache)
fp8      e4m3 values, one fp32 scale per (batch, head): absmax -> 448
rtn      round-to-nearest per token, groups of G channels, symmetric absmax, fp16 scale
quarot   Hadamard rotation of the whole head_dim, then rtn (decode rotates back)
kivi     keys per channel (groups of G tokens), values per token (groups of G channels),
         asymmetric, fp16 scale + fp16 min; a partial last token group is padded by
         repeating the last token (the padded codes are stored and counted)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import groupquant_ref as gq
from .container import Encoded
from .hadamard import hadamard
from .spec import CodecSpec, Method, QuantSpec

FP8_MAX = 448.0


def _gq_encode(x: torch.Tensor, qs: QuantSpec) -> dict[str, torch.Tensor]:
    qp = gq.choose_qparams(x, qs)
    out = {"codes": gq.pack(gq.quantize(x, qp, qs), qs.bits), "scales": qp.scales}
    if qp.zeros is not None:
        out["zeros"] = qp.zeros
    if qp.scale_of_scales is not None:
        out["scale_of_scales"] = qp.scale_of_scales
    return out


def _gq_decode(t: dict[str, torch.Tensor], qs: QuantSpec) -> torch.Tensor:
    qp = gq.QParams(t["scales"], t.get("zeros"), t.get("scale_of_scales"))
    return gq.dequantize(gq.unpack(t["codes"], qs.bits), qp, qs)


def _kivi_keys_layout(x: torch.Tensor, group: int) -> torch.Tensor:
    """[B, H, S, D] -> [B, H, D, S_pad]: tokens last, padded to a multiple of `group`."""
    xt = x.transpose(-1, -2)
    pad = (-xt.shape[-1]) % group
    if pad:
        b, h, d, s = xt.shape
        xt = F.pad(xt.reshape(b * h, d, s), (0, pad), mode="replicate").reshape(b, h, d, s + pad)
    return xt.contiguous()


def encode(x: torch.Tensor, spec: CodecSpec, role: str = "k") -> Encoded:
    """Encode x [B, H, S, D] with a baseline spec (fp32 math)."""
    b, h, s, d = x.shape
    shape = (b, h, s, d)
    xf = x.to(torch.float32)
    m = spec.method
    if m is Method.BF16:
        tensors = {"values": x.to(torch.bfloat16).contiguous()}
    elif m is Method.FP8:
        amax = xf.abs().flatten(-2).amax(-1)
        scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
        vals = (xf / scale[..., None, None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        tensors = {"values": vals, "scale": scale}
    elif m is Method.RTN:
        assert spec.quant is not None
        tensors = _gq_encode(xf, spec.quant)
    elif m is Method.QUAROT:
        assert spec.quant is not None
        tensors = _gq_encode(xf @ hadamard(shape[-1], x.device), spec.quant)
    elif m is Method.KIVI:
        assert spec.quant is not None
        src = _kivi_keys_layout(xf, spec.quant.group_size) if role == "k" else xf
        tensors = _gq_encode(src, spec.quant)
    else:
        raise ValueError(f"baselines.encode: {m.value} is not a baseline method")
    return Encoded(spec, shape, role, tensors)


def decode(enc: Encoded, out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Reconstruction [B, H, S, D] in `out_dtype`."""
    m, t = enc.spec.method, enc.tensors
    if m is Method.BF16:
        return t["values"].to(out_dtype, copy=True)  # decode materialises, like every codec
    if m is Method.FP8:
        return (t["values"].float() * t["scale"][..., None, None]).to(out_dtype)
    assert enc.spec.quant is not None
    y = _gq_decode(t, enc.spec.quant)
    if m is Method.QUAROT:
        y = y @ hadamard(enc.shape[-1], y.device)
    elif m is Method.KIVI and enc.role == "k":
        y = y[..., : enc.shape[2]].transpose(-1, -2)
    return y.to(out_dtype)
