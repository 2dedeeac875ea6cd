"""Pure-torch (fp32) reference of the whole QVG codec.

Encode, per (batch, head) row of x [B, H, S, D]:

    r_0 = x
    for t in 0..T-1:                      progressive residual quantization
        c_t  = kmeans(r_t) -> stored dtype (bf16)         [C, D]
        id_t = nearest stored centroid of each token     [S]
        r_{t+1} = r_t - c_t[id_t]                         semantic-aware smoothing
    y = Hadamard(r_T) per group (if spec.quant.rotate)
    codes, scales = group-quantize(y)  (all 2^b levels, scale by least error)

Decode: x_hat = Hadamard(dequant(codes)) + sum_t c_t[id_t]   (H is its own inverse).

Stored tensors (codes, scales, zeros, scale_of_scales, centroids.t, ids.t): their names,
shapes, dtypes and bytes are listed once, in `kernels.page_layout`.
"""

from __future__ import annotations

import torch

from . import groupquant_ref as gq
from . import kmeans_ref as km
from .container import Encoded
from .hadamard import rotate_groups
from .page_layout import stage_names
from .spec import CodecSpec


def warm_centroids(prev: Encoded | None, t: int, shape: tuple[int, ...]) -> torch.Tensor | None:
    """Stage-t centroids of the previous span, if they fit this span's [B, H, C, D]."""
    if prev is None:
        return None
    c = prev.tensors.get(stage_names(t)[0])
    return c if c is not None and tuple(c.shape) == tuple(shape) else None


def kmeans_stage(
    r: torch.Tensor, spec: CodecSpec, t: int, warm: torch.Tensor | None, heads: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(stored centroids [R, C, D], int64 ids [R, S]) of residual rows r [R, S, D] (fp32)."""
    ks = spec.kmeans
    assert ks is not None
    if warm is None:
        init = km.init_centroids(r, ks.centroids, ks.seed + t, period=heads)
    else:
        init = warm.reshape(r.shape[0], ks.centroids, r.shape[2]).float()
    iters = ks.iterations(warm is not None)
    cent = km.kmeans(r, init, iters, ks.tol).centroids.to(ks.centroid_dtype)
    return cent, km.assign(r, cent.float())


def encode(
    x: torch.Tensor, spec: CodecSpec, role: str = "k", warm: Encoded | None = None
) -> Encoded:
    """Encode x [B, H, S, D] (any float dtype) with QVG spec `spec` (fp32 math)."""
    ks, qs = spec.kmeans, spec.quant
    assert ks is not None and qs is not None
    b, h, s, d = x.shape
    r = x.reshape(b * h, s, d).to(torch.float32)
    out: dict[str, torch.Tensor] = {}
    stages = []
    for t in range(ks.stages):
        w = warm_centroids(warm, t, (b, h, ks.centroids, d))
        cent, ids = kmeans_stage(r, spec, t, w, heads=h)
        r = r - torch.gather(cent.float(), 1, ids[..., None].expand(-1, -1, d))
        stages.append((cent, ids))
    y = rotate_groups(r, qs.group_size) if qs.rotate else r
    qp = gq.choose_qparams(y, qs)
    out["codes"] = gq.pack(gq.quantize(y, qp, qs), qs.bits).reshape(b, h, s, -1)
    out["scales"] = qp.scales.reshape(b, h, s, -1)
    if qp.zeros is not None:
        out["zeros"] = qp.zeros.reshape(b, h, s, -1)
    if qp.scale_of_scales is not None:
        out["scale_of_scales"] = qp.scale_of_scales.reshape(b, h)
    for t, (cent, ids) in enumerate(stages):
        cname, iname = stage_names(t)
        out[cname] = cent.reshape(b, h, ks.centroids, d)
        out[iname] = ids.reshape(b, h, s).to(ks.id_dtype)
    return Encoded(spec, (b, h, s, d), role, out)


def residual(enc: Encoded) -> torch.Tensor:
    """fp32 dequantized, un-rotated residual [B, H, S, D]."""
    qs = enc.spec.quant
    assert qs is not None
    t = enc.tensors
    sos = t.get("scale_of_scales")
    qp = gq.QParams(t["scales"], t.get("zeros"), sos)
    y = gq.dequantize(gq.unpack(t["codes"], qs.bits), qp, qs)
    return rotate_groups(y, qs.group_size) if qs.rotate else y


def decode(enc: Encoded, out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Reconstruction [B, H, S, D] in `out_dtype` (fp32 accumulation)."""
    ks = enc.spec.kmeans
    assert ks is not None
    b, h, s, d = enc.shape
    x = residual(enc).reshape(b * h, s, d)
    for t in range(ks.stages):
        cname, iname = stage_names(t)
        cent = enc.tensors[cname].reshape(b * h, -1, d).float()
        ids = enc.tensors[iname].reshape(b * h, s).long()
        x = x + torch.gather(cent, 1, ids[..., None].expand(-1, -1, d))
    return x.reshape(b, h, s, d).to(out_dtype)
