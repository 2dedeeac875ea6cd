"""Alternatives of the fused QVG decode (kernels/decode_triton.py), kept for tuning sweeps.

The product kernel in `kernels.decode_triton` has one path: one thread per token-group,
register butterflies, the finished tile through shared memory to contiguous stores (since
2026-12-03). This module keeps an earlier kernel (the lane layout: a group's values spread over
a warp's lanes) with every switch it was tuned over, so `tools/decode_sweep.py` can re-measure
them on new hardware:

    rot     "dot" fp16 [BM, G] x [G, G] tensor-core dot of the +-1 Sylvester matrix;
            "dot_i8" the same as an int8 dot of 2*(q - m) (exact int32 accumulation; bits <= 4
            and G >= 32, else "dot"); "fwht" log2(G) register butterfly stages (constant
            geometry, the product's method); "fwht_sum" butterflies as a sum over the pair axis
            and a select. All exact: integer-valued fp32 / int32 operands.
    join    True: one vector load per code byte, fields interleaved in registers (product);
            False: one (L1-cached) byte load per code.
    evict   stores evict-first, centroid rows evict-last (H100: no gain, 78.6 vs 79.1 us).
    maxnreg register cap per thread (H100: no gain; tools/decode_sweep.py probe).

H100 qvg-int2 [1, 12, 37440, 128] bf16 (tools/decode_sweep.py rot): fwht bs32 w2 waves16
76.7 us = 60.0% of copy; dot_i8 bs32 w4 waves8 77.6 us; dot 79.1 us; no rotation 59.9 us.
Tested exact against the reference in tests/tools/test_decode_variants.py.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from kernels.spec import QuantSpec  # noqa: E402

BLOCK_S = 32
NUM_WARPS = 2
JOIN = True
NUM_STAGES = 3
WAVES = 16
MAXNREG = None  # register cap per thread (occupancy), None: compiler's choice
EVICT = False
ROT = "fwht"  # small-shape w4: g16 7.9 us (dot 8.8); int4 9.6 (fwht_sum 6.8, dot 48.5)
ROTS = ("dot", "dot_i8", "fwht", "fwht_sum")
_ROT_IDS = {"dot": 0, "dot_i8": 1, "fwht": 2, "fwht_sum": 3}


@triton.jit
def _unpack(
    codes_ptr,
    n,
    ok,
    G: tl.constexpr,
    BITS: tl.constexpr,
    JOIN: tl.constexpr,
):
    """int32 codes [BM, G] of token-groups n; code j sits at bits (j%K)*BITS of byte j//K."""
    K: tl.constexpr = 8 // BITS
    MASK: tl.constexpr = (1 << BITS) - 1
    base = codes_ptr + n.to(tl.int64) * (G // K)  # one group's bytes are contiguous
    if JOIN and K > 1:  # one (vector) load per byte, then interleave the K fields in registers
        b = tl.load(base[:, None] + tl.arange(0, G // K)[None, :], mask=ok[:, None], other=0)
        b = b.to(tl.int32)
        if K == 2:
            q = tl.join(b & MASK, b >> 4)
        else:
            # join appends a minor axis: [j, u, p] <- field 2u+p, flattened to 4j + 2u + p
            q = tl.join(tl.join(b & 3, (b >> 4) & 3), tl.join((b >> 2) & 3, (b >> 6) & 3))
        return tl.reshape(q, (n.shape[0], G))
    offs_c = tl.arange(0, G)  # one (L1-cached) byte load per code: no register shuffles
    b = tl.load(base[:, None] + offs_c[None, :] // K, mask=ok[:, None], other=0).to(tl.int32)
    return (b >> ((offs_c % K) * BITS)[None, :]) & MASK


@triton.jit
def _fwht(x, BM: tl.constexpr, G: tl.constexpr, LOG_G: tl.constexpr, MODE: tl.constexpr):
    """Unnormalized +-1 Sylvester transform of each row of x [BM, G] (fp32, exact on integers)."""
    if MODE == 2:  # constant geometry: y[i] = x[2i] + x[2i+1], y[G/2 + i] = x[2i] - x[2i+1]
        for _ in tl.static_range(LOG_G):
            a, b = tl.split(tl.reshape(x, (BM, G // 2, 2)))
            x = tl.reshape(tl.permute(tl.join(a + b, a - b), (0, 2, 1)), (BM, G))
    else:  # stage j: pairs at stride 2^j, [BM, A, 2, B] with B = 2^j
        sgn = 1.0 - 2.0 * tl.arange(0, 2).to(tl.float32)
        for j in tl.static_range(LOG_G):
            x4 = tl.reshape(x, (BM, G // (2 << j), 2, 1 << j))
            sm = tl.sum(x4, axis=2)
            df = tl.sum(x4 * sgn[None, None, :, None], axis=2)
            top = (tl.arange(0, 2) == 0)[None, None, :, None]
            x = tl.reshape(tl.where(top, sm[:, :, None, :], df[:, :, None, :]), (BM, G))
    return x


@triton.jit
def _decode_kernel(
    codes_ptr,
    scales_ptr,
    zeros_ptr,
    sos_ptr,
    c_ptr,
    ids_ptr,
    out_ptr,
    R,
    S,
    C,
    H_OUT,
    stride_b,
    stride_h,
    stride_s,
    N,
    n_tiles,
    D: tl.constexpr,
    G: tl.constexpr,
    T: tl.constexpr,
    BITS: tl.constexpr,
    SYM: tl.constexpr,
    ROTATE: tl.constexpr,
    HAS_SOS: tl.constexpr,
    DOT_FP32: tl.constexpr,
    JOIN: tl.constexpr,
    BM: tl.constexpr,
    EVICT: tl.constexpr,
    ROT: tl.constexpr,
    LOG_G: tl.constexpr,
):
    """Tiles of BM token-groups (flat index n = (row*S + token)*NG + g over all rows): codes,
    scales and (contiguous) outputs of a tile are contiguous, and one [BM, G] x [G, G] dot
    un-rotates every group of the tile. A persistent grid strides over the tiles."""
    LEVELS: tl.constexpr = 1 << BITS
    NG: tl.constexpr = D // G
    offs_c = tl.arange(0, G)
    offs_m = tl.arange(0, BM)
    if ROTATE and ROT <= 1:  # +-1 Sylvester matrix from the parity of popcount(i & j): no load
        p = offs_c[:, None] & offs_c[None, :]
        p ^= p >> 4
        p ^= p >> 2
        p ^= p >> 1
        if ROT == 1:
            h = (1 - 2 * (p & 1)).to(tl.int8)
        else:
            h = (1 - 2 * (p & 1)).to(tl.float32 if DOT_FP32 else tl.float16)
    for tile in range(tl.program_id(0), n_tiles, tl.num_programs(0)):
        n = tile * BM + offs_m
        ok = n < N
        tg = n // NG  # flat token index over R*S
        g = n % NG
        row = tg // S
        tok = tg - row * S
        qi = _unpack(codes_ptr, n, ok, G, BITS, JOIN)
        s = tl.load(scales_ptr + n, mask=ok, other=0.0).to(tl.float32)
        if HAS_SOS:
            s = s * tl.load(sos_ptr + row, mask=ok, other=1.0)
        if ROTATE and ROT == 1:  # 2 * (q - m): odd integers, |.| <= 15 (bits <= 4)
            lv2 = (2 * qi - (LEVELS - 1)) if SYM else qi
            acc = tl.dot(lv2.to(tl.int8), h, out_dtype=tl.int32).to(tl.float32)
            y = acc * (s * ((0.5 if SYM else 1.0) / tl.sqrt(G * 1.0)))[:, None]
        q = qi.to(tl.float32)
        lv = q - (LEVELS - 1) / 2 if SYM else q
        if ROTATE and ROT >= 2:
            y = _fwht(lv, BM, G, LOG_G, ROT) * (s * (1.0 / tl.sqrt(G * 1.0)))[:, None]
        elif ROTATE and ROT == 1:
            pass
        elif ROTATE:
            if DOT_FP32:
                acc = tl.dot(lv, h, input_precision="ieee")
            else:
                acc = tl.dot(lv.to(tl.float16), h)
            y = acc * (s * (1.0 / tl.sqrt(G * 1.0)))[:, None]
        else:
            y = lv * s[:, None]
        if not SYM:
            z = tl.load(zeros_ptr + n, mask=ok, other=0.0).to(tl.float32)
            if HAS_SOS:
                z = z * tl.load(sos_ptr + row, mask=ok, other=1.0)
            if ROTATE:
                y += tl.where(offs_c[None, :] == 0, z[:, None] * tl.sqrt(G * 1.0), 0.0)
            else:
                y += z[:, None]
        for t in tl.static_range(T):
            idx = tl.load(ids_ptr + (t * R * S + tg.to(tl.int64)), mask=ok, other=0)
            cbase = ((t * R + row.to(tl.int64)) * C + idx.to(tl.int64)) * D + g * G
            cen = tl.load(
                c_ptr + cbase[:, None] + offs_c[None, :],
                mask=ok[:, None],
                other=0.0,
                eviction_policy="evict_last" if EVICT else "",
            )
            y += cen.to(tl.float32)
        obase = (
            (row // H_OUT).to(tl.int64) * stride_b
            + (row % H_OUT).to(tl.int64) * stride_h
            + tok.to(tl.int64) * stride_s
            + g * G
        )
        tl.store(
            out_ptr + obase[:, None] + offs_c[None, :],
            y.to(out_ptr.dtype.element_ty),
            mask=ok[:, None],
            eviction_policy="evict_first" if EVICT else "",
        )


@functools.cache
def _num_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


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
    block_s: int = BLOCK_S,
    num_warps: int = NUM_WARPS,
    join: bool = JOIN,
    num_stages: int = NUM_STAGES,
    waves: int = WAVES,
    evict: bool = EVICT,
    maxnreg: int | None = MAXNREG,
    rot: str = ROT,
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
    rot: un-rotation method (see ROT), exact in all cases.
    Tuning: a tile is block_s tokens (block_s * D/G token-groups); waves > 0 runs a persistent
    grid of waves * SM-count programs (0: one program per tile).
    """
    b, h, s, cb = codes.shape
    d, g, r = cb * 8 // spec.bits, spec.group_size, b * h
    ng = d // g
    if out is None:
        out = torch.empty(b, h, s, d, dtype=out_dtype, device=codes.device)
    if tuple(out.shape) != (b, h, s, d) or out.stride(-1) != 1:
        raise ValueError(f"decode: out must be [{b}, {h}, {s}, {d}] with unit stride on D")
    if ng & (ng - 1) or g & (g - 1):
        raise ValueError(f"decode: D/G = {ng} and G = {g} must be powers of two")
    n = r * s * ng
    if n >= 2**31 - 2**20:
        raise ValueError("decode: more than 2**31 token-groups in one call")
    t = 0 if centroids is None else centroids.shape[0]
    c = 1 if centroids is None else centroids.shape[-2]
    if t and ids is None:
        raise ValueError("decode: centroids given without ids")
    cen = codes if centroids is None else centroids.contiguous()
    idt = codes if ids is None or centroids is None else ids.contiguous()
    interp = codes.device.type == "cpu"  # CPU tensors only run under TRITON_INTERPRET=1
    bm = block_s * ng
    rot_id = _ROT_IDS[rot]
    if rot_id == 1 and (spec.bits > 4 or g < 32):
        rot_id = 0  # int8 operands: 2q - (2^bits - 1) must fit, and K >= 32
    n_tiles = triton.cdiv(n, bm)
    grid = n_tiles
    if waves > 0 and not interp:
        grid = min(n_tiles, waves * _num_sms(codes.device.index or 0))
    _decode_kernel[(grid,)](
        codes.contiguous(),
        scales.contiguous(),
        scales if zeros is None else zeros.contiguous(),
        scales if scale_of_scales is None else scale_of_scales.contiguous(),
        cen,
        idt,
        out,
        r,
        s,
        c,
        h,
        out.stride(0),
        out.stride(1),
        out.stride(2),
        n,
        n_tiles,
        D=d,
        G=g,
        T=t,
        BITS=spec.bits,
        SYM=spec.symmetric,
        ROTATE=spec.rotate,
        HAS_SOS=scale_of_scales is not None,
        DOT_FP32=interp,
        JOIN=join,
        BM=bm,
        EVICT=evict,
        ROT=rot_id,
        LOG_G=g.bit_length() - 1,
        num_warps=num_warps,
        num_stages=num_stages,
        **({} if maxnreg is None or interp else {"maxnreg": maxnreg}),
    )
    return out
