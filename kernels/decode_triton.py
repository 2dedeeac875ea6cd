"""Triton fused QVG decode: unpack + scale (+ zero) + un-rotate + add every stage's centroid.

One program per (row, block of BLOCK_S tokens), all of head_dim (static loop over the D/G
groups), everything in registers, one pass: each output element is written once and each code
byte, scale and id is read once from HBM (centroid tables, 64 KiB per row and stage at C=256,
D=128, stay in L2).

Exact un-rotation on tensor cores: a group shares one scale, so
    H_n (s * (q - m)) = (s / sqrt(G)) * (H_pm1 (q - m))
where H_pm1 is the +-1 Sylvester matrix and q - m are half-integers (|.| <= 127.5): both are
exact in fp16, and the fp32-accumulated dot of them is exact, so only the final multiply
rounds. (The interpreter gets 16-bit dots wrong, so on CPU the operands stay fp32: same values.)
Asymmetric groups add z * (column sums of H_n) = z * sqrt(G) on column 0 only.

Bytes for qvg-int2 [1, 12, 37440, 128]: reads 14.4 MB codes + 0.9 MB fp8 scales + 0.45 MB ids
(+ 0.8 MB centroids), writes 115 MB bf16.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .hadamard import hadamard
from .spec import QuantSpec


@triton.jit
def _unpack(
    codes_ptr,
    row,
    S,
    offs_s,
    s_ok,
    g,
    D: tl.constexpr,
    G: tl.constexpr,
    BITS: tl.constexpr,
    JOIN: tl.constexpr,
):
    """int32 codes [BLOCK_S, G] of group g; code j sits at bits (j%K)*BITS of byte j//K."""
    K: tl.constexpr = 8 // BITS
    MASK: tl.constexpr = (1 << BITS) - 1
    # int64 only in the per-row scalar; per-element offsets stay int32 (fewer registers)
    base = codes_ptr + row * S * (D // K) + offs_s[:, None] * (D // K) + g * (G // K)
    if JOIN and K > 1:  # one load per byte, then interleave the K fields in registers
        b = tl.load(base + tl.arange(0, G // K)[None, :], mask=s_ok[:, None], other=0)
        b = b.to(tl.int32)
        if K == 2:
            q = tl.join(b & MASK, b >> 4)
        else:
            # join appends a minor axis: [j, u, p] <- field 2u+p, flattened to 4j + 2u + p
            q = tl.join(tl.join(b & 3, (b >> 4) & 3), tl.join((b >> 2) & 3, (b >> 6) & 3))
        return tl.reshape(q, (offs_s.shape[0], G))
    offs_c = tl.arange(0, G)  # one (L1-cached) byte load per code: no register shuffles
    b = tl.load(base + offs_c[None, :] // K, mask=s_ok[:, None], other=0).to(tl.int32)
    return (b >> ((offs_c % K) * BITS)[None, :]) & MASK


@triton.jit
def _decode_kernel(
    codes_ptr,
    scales_ptr,
    zeros_ptr,
    sos_ptr,
    c_ptr,
    ids_ptr,
    h_ptr,
    out_ptr,
    R,
    S,
    C,
    H_OUT,
    stride_b,
    stride_h,
    stride_s,
    D: tl.constexpr,
    G: tl.constexpr,
    T: tl.constexpr,
    BITS: tl.constexpr,
    SYM: tl.constexpr,
    ROTATE: tl.constexpr,
    HAS_SOS: tl.constexpr,
    DOT_FP32: tl.constexpr,
    JOIN: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    LEVELS: tl.constexpr = 1 << BITS
    NG: tl.constexpr = D // G
    row = tl.program_id(0).to(tl.int64)
    offs_s = tl.program_id(1) * BLOCK_S + tl.arange(0, BLOCK_S)
    s_ok = offs_s < S
    offs_c = tl.arange(0, G)
    out_row = out_ptr + (row // H_OUT) * stride_b + (row % H_OUT) * stride_h
    scales_row = scales_ptr + row * S * NG
    zeros_row = zeros_ptr + row * S * NG
    sos = tl.load(sos_ptr + row) if HAS_SOS else 1.0
    if ROTATE:
        h = tl.load(h_ptr + offs_c[:, None] * G + offs_c[None, :])  # +-1, fp16 or fp32
    for g in tl.static_range(NG):
        q = _unpack(codes_ptr, row, S, offs_s, s_ok, g, D, G, BITS, JOIN).to(tl.float32)
        s = tl.load(scales_row + offs_s * NG + g, mask=s_ok, other=0.0)
        s = s.to(tl.float32) * sos
        lv = q - (LEVELS - 1) / 2 if SYM else q
        if ROTATE:
            if DOT_FP32:
                acc = tl.dot(lv, h, input_precision="ieee")
            else:
                acc = tl.dot(lv.to(tl.float16), h)
            y = acc * (s * (1.0 / tl.sqrt(G * 1.0)))[:, None]
        else:
            y = lv * s[:, None]
        if not SYM:
            z = tl.load(zeros_row + offs_s * NG + g, mask=s_ok, other=0.0)
            z = z.to(tl.float32) * sos
            if ROTATE:
                y += tl.where(offs_c[None, :] == 0, z[:, None] * tl.sqrt(G * 1.0), 0.0)
            else:
                y += z[:, None]
        for t in tl.static_range(T):
            idx = tl.load(ids_ptr + (t * R + row) * S + offs_s, mask=s_ok, other=0).to(tl.int32)
            cen = tl.load(
                c_ptr + (t * R + row) * C * D + idx[:, None] * D + g * G + offs_c[None, :],
                mask=s_ok[:, None],
                other=0.0,
            )
            y += cen.to(tl.float32)
        tl.store(
            out_row + offs_s[:, None] * stride_s + g * G + offs_c[None, :],
            y.to(out_ptr.dtype.element_ty),
            mask=s_ok[:, None],
        )


def _pm1_hadamard(g: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return (hadamard(g, device) * g**0.5).round().to(dtype).contiguous()


def decode(
    codes: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor | None,
    scale_of_scales: torch.Tensor | None,
    centroids: torch.Tensor | None,
    ids: torch.Tensor | None,
    spec: QuantSpec,
    out_dtype: torch.dtype = torch.bfloat16,
    out: torch.Tensor | None = None,
    block_s: int = 64,
    num_warps: int = 4,
    join: bool = True,
) -> torch.Tensor:
    """Fused QVG decode of one span (or any group-quantized tensor when centroids is None).

    codes: uint8 [B, H, S, D*bits/8]; scales (and zeros, asymmetric only): [B, H, S, D/G] in
    spec.scale_dtype; scale_of_scales: fp32 [B, H] (fp8 scales) or None; centroids:
    [T, B, H, C, D] (or [T, B*H, C, D]) bf16/fp16/fp32 or None; ids: [T, B, H, S] (or
    [T, B*H, S]) uint8/int16/int32/int64 or None.
    Returns `out` or a new [B, H, S, D] tensor of `out_dtype` (bf16 or fp32). `out` may be any
    [B, H, S, D] view with unit stride on D (a slice of a paged workspace): it is written in
    place. Bytes: reads B*H*S*(D*bits/8 + (D/G)*scale.itemsize*(1 or 2) + T*id.itemsize) plus
    the centroid rows gathered from L2, writes B*H*S*D*out.itemsize.
    """
    b, h, s, cb = codes.shape
    d, g, r = cb * 8 // spec.bits, spec.group_size, b * h
    if out is None:
        out = torch.empty(b, h, s, d, dtype=out_dtype, device=codes.device)
    if tuple(out.shape) != (b, h, s, d) or out.stride(-1) != 1:
        raise ValueError(f"decode: out must be [{b}, {h}, {s}, {d}] with unit stride on D")
    t = 0 if centroids is None else centroids.shape[0]
    c = 1 if centroids is None else centroids.shape[-2]
    cen = codes if t == 0 else centroids.contiguous()
    idt = codes if t == 0 else ids.contiguous()
    interp = codes.device.type == "cpu"  # CPU tensors only run under TRITON_INTERPRET=1
    hm = _pm1_hadamard(g, codes.device, torch.float32 if interp else torch.float16)
    grid = (r, triton.cdiv(s, block_s))
    _decode_kernel[grid](
        codes.contiguous(),
        scales.contiguous(),
        scales if zeros is None else zeros.contiguous(),
        hm if scale_of_scales is None else scale_of_scales.contiguous(),
        cen,
        idt,
        hm,
        out,
        r,
        s,
        c,
        h,
        out.stride(0),
        out.stride(1),
        out.stride(2),
        D=d,
        G=g,
        T=t,
        BITS=spec.bits,
        SYM=spec.symmetric,
        ROTATE=spec.rotate,
        HAS_SOS=scale_of_scales is not None,
        DOT_FP32=interp,
        JOIN=join,
        BLOCK_S=block_s,
        num_warps=num_warps,
    )
    return out
