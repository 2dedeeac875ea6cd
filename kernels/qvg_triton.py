"""QVG codec on Triton kernels: the same `Encoded` tensors as `qvg_ref`, so either side decodes
what the other encoded.

    encode: per stage t: k-means (kmeans_triton, seeded like the reference or warm-started from
            the previous span's centroids) -> stored centroids -> final assignment; then one
            fused kernel (quant_triton) subtracts every stage's centroid from x, rotates,
            chooses scales, quantizes and packs.
    decode: one fused kernel (decode_triton).

x is read in its own dtype (bf16 K/V are never copied to fp32 for stage 0); later stages run
k-means on the fp32 residual, as the reference does.
"""

from __future__ import annotations

import torch

from . import decode_triton, kmeans_triton, quant_triton
from .container import Encoded
from .page_layout import stage_names
from .qvg_ref import warm_centroids
from .spec import CodecSpec


def _stack(ts: list[torch.Tensor]) -> torch.Tensor:
    return ts[0][None] if len(ts) == 1 else torch.stack(ts)


def encode(
    x: torch.Tensor, spec: CodecSpec, role: str = "k", warm: Encoded | None = None
) -> Encoded:
    """Encode x [B, H, S, D] (fp32/bf16/fp16) with QVG spec `spec`; tensors as qvg_ref.encode."""
    ks, qs = spec.kmeans, spec.quant
    if ks is None or qs is None:
        raise ValueError(f"qvg_triton.encode: {spec.name} is not a QVG spec")
    b, h, s, d = x.shape
    xr = x.reshape(b * h, s, d)
    r = xr
    cents, ids = [], []
    for t in range(ks.stages):
        w = warm_centroids(warm, t, (b, h, ks.centroids, d))
        if w is None:
            init = kmeans_triton.init_centroids(r, ks.centroids, ks.seed + t, period=h)
        else:
            init = w.reshape(b * h, ks.centroids, d).float()
        iters = ks.iterations(w is not None)
        cent = kmeans_triton.kmeans(r, init, iters, ks.tol).centroids.to(ks.centroid_dtype)
        idx = kmeans_triton.assign(r, cent)
        if t + 1 < ks.stages:  # the next stage clusters this residual (fp32, as the reference)
            r = r.float() - torch.gather(cent.float(), 1, idx[..., None].expand(-1, -1, d))
        cents.append(cent)
        ids.append(idx.to(ks.id_dtype))
    qz = quant_triton.quantize(xr, _stack(cents), _stack(ids), qs)
    out = {"codes": qz.codes.reshape(b, h, s, -1), "scales": qz.scales.reshape(b, h, s, -1)}
    if qz.zeros is not None:
        out["zeros"] = qz.zeros.reshape(b, h, s, -1)
    if qz.scale_of_scales is not None:
        out["scale_of_scales"] = qz.scale_of_scales.reshape(b, h)
    for t, (cent, idx) in enumerate(zip(cents, ids, strict=True)):
        cname, iname = stage_names(t)
        out[cname] = cent.reshape(b, h, ks.centroids, d)
        out[iname] = idx.reshape(b, h, s)
    return Encoded(spec, (b, h, s, d), role, out)


def decode(
    enc: Encoded, out_dtype: torch.dtype = torch.bfloat16, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Reconstruction [B, H, S, D] in `out_dtype`; with `out` (a [B, H, S, D] view with unit
    stride on D, e.g. a paged workspace slice) it is written in place and returned."""
    ks, qs = enc.spec.kmeans, enc.spec.quant
    if ks is None or qs is None:
        raise ValueError(f"qvg_triton.decode: {enc.spec.name} is not a QVG spec")
    t = enc.tensors
    names = [stage_names(i) for i in range(ks.stages)]
    return decode_triton.decode(
        t["codes"],
        t["scales"],
        t.get("zeros"),
        t.get("scale_of_scales"),
        _stack([t[c] for c, _ in names]),
        _stack([t[i] for _, i in names]),
        qs,
        out_dtype=out_dtype,
        out=out,
    )
