"""Triton fused QVG decode: unpack + scale (+ zero) + un-rotate + add every stage's centroid.

A tile is `Launch.block_s` tokens x all D/G groups of head_dim, one thread per token-group,
everything in registers, one pass: each output element is written once and each code byte,
scale and id is read once from HBM (centroid tables, 64 KiB per row and stage at C=256, D=128,
stay in L2). A thread holds its group's G values, so the unpack and the butterflies move no
data between threads; the finished tile (out dtype) goes through shared memory once so that a
warp's stores are contiguous.

Exact un-rotation in registers: a group shares one scale, so
    H_n (s * (q - m)) = (s / sqrt(G)) * (H_pm1 (q - m))
where H_pm1 is the +-1 Sylvester matrix and q - m are half-integers (|.| <= 127.5): log2(G)
butterfly stages of sums and differences are exact in fp32, so only the final multiply rounds.
Asymmetric groups add z * (column sums of H_n) = z * sqrt(G) on column 0 only.
The alternatives measured against this path (tensor-core dots, per-byte loads, eviction hints,
register caps) live in tools/decode_variants.py with the sweep that chose it.

Bytes for qvg-int2 [1, 12, 37440, 128]: reads 14.4 MB codes + 0.9 MB fp8 scales + 0.45 MB ids
(+ 0.8 MB centroids), writes 115 MB bf16.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .spec import QuantSpec


@dataclass(frozen=True, slots=True)
class Launch:
    """Launch shape of the decode kernel (results do not depend on it, only the speed).

    Defaults from the H200 sweeps of 2026-12-03 (BENCHMARKS.md, "Tenth session"): qvg-int2
    [1, 12, 37440, 128] -> bf16 in 51.7 / 50.9 us (two runs) = 65-66 % of a bf16 clone, one
    program per tile, fp16 butterflies, 2 pipeline stages (the c0871e3 kernel: 63.4-63.9 us,
    53 %, same runs).
    """

    block_s: int = 32
    """Tokens per tile (a tile is block_s * D/G token-groups)."""
    num_warps: int = 2
    """Warps per program."""
    num_stages: int = 2
    """Software pipelining depth of the tile loop."""
    waves: int = 0
    """Persistent grid of waves * SM-count programs; 0: one program per tile."""
    tma: bool = False
    """Store the finished tile with one TMA (tensor-descriptor) store per tile instead of
    per-thread vector stores (contiguous `out` only; ignored otherwise). Off: on the H200
    (2026-12-04, tools/decode_launch.py) it is no faster at the fast launch shapes (16 x 1
    warp: 49.1-50.0 us with it, 49.3-49.4 without) and helps only slow large tiles."""
    half: bool = True
    """Butterflies in fp16 at <= 4 bits, fp32 at 8. Exact either way: at G <= 128 every partial
    sum is a half-integer of magnitude <= 960 (symmetric) or an integer <= 1920 (asymmetric),
    which fp16 holds exactly."""

    def __post_init__(self) -> None:
        if self.block_s < 1 or self.block_s & (self.block_s - 1):
            raise ValueError(f"Launch.block_s = {self.block_s}: use a power of two")
        if self.num_warps < 1 or self.num_stages < 1 or self.waves < 0:
            raise ValueError("Launch: num_warps and num_stages must be >= 1, waves >= 0")


@triton.jit
def _unpack(
    codes_ptr,
    n,
    ok,
    G: tl.constexpr,
    BITS: tl.constexpr,
):
    """int32 codes [BM, G] of token-groups n; code j sits at bits (j%K)*BITS of byte j//K.
    One (vector) load per byte, then the K fields are interleaved in registers."""
    K: tl.constexpr = 8 // BITS
    MASK: tl.constexpr = (1 << BITS) - 1
    base = codes_ptr + n.to(tl.int64) * (G // K)  # one group's bytes are contiguous
    b = tl.load(base[:, None] + tl.arange(0, G // K)[None, :], mask=ok[:, None], other=0)
    b = b.to(tl.int32)
    if K == 1:
        return b
    if K == 2:
        q = tl.join(b & MASK, b >> 4)
    else:
        # join appends a minor axis: [j, u, p] <- field 2u+p, flattened to 4j + 2u + p
        q = tl.join(tl.join(b & 3, (b >> 4) & 3), tl.join((b >> 2) & 3, (b >> 6) & 3))
    return tl.reshape(q, (n.shape[0], G))


@triton.jit
def _fwht(x, BM: tl.constexpr, G: tl.constexpr, LOG_G: tl.constexpr):
    """Unnormalized +-1 Sylvester transform of each row of x [BM, G] (fp32, exact on integers).

    Constant geometry: every stage maps y[i] = x[2i] + x[2i+1], y[G/2 + i] = x[2i] - x[2i+1]
    (split the even/odd pair, join sum and difference, move the pair bit to the top)."""
    for _ in tl.static_range(LOG_G):
        a, b = tl.split(tl.reshape(x, (BM, G // 2, 2)))
        x = tl.reshape(tl.permute(tl.join(a + b, a - b), (0, 2, 1)), (BM, G))
    return x


@triton.jit
def _e4m3(b):
    """fp32 value of non-negative e4m3fn bytes b (int32; scales are never negative):
    normal (1 + m/8) * 2^(e - 7) as fp32 bits, subnormal m * 2^-9."""
    e = (b >> 3) & 15
    m = b & 7
    normal = (((e + 120) << 23) | (m << 20)).to(tl.float32, bitcast=True)
    return tl.where(e == 0, m.to(tl.float32) * 0.001953125, normal)


@triton.jit
def _fwht_rows(x, G: tl.constexpr, BM: tl.constexpr, LOG_G: tl.constexpr):
    """Unnormalized +-1 Sylvester transform of each row of x [BM, G] (fp32 or fp16; exact while
    the partial sums fit the dtype, see Launch.half), in place: the stage for bit k pairs j and
    j + 2^k. With a row in one thread's registers (the decode kernel's layout) the reshapes and
    permutes move no data: no shuffles, no shared memory."""
    for k in tl.static_range(LOG_G):
        x4 = tl.reshape(x, (BM, G >> (k + 1), 2, 1 << k))
        a, b = tl.split(tl.permute(x4, (0, 1, 3, 2)))
        x = tl.reshape(tl.permute(tl.join(a + b, a - b), (0, 1, 3, 2)), (BM, G))
    return x


@triton.jit
def _decode_kernel(
    words_ptr, scales_ptr, zeros_ptr, sos_ptr, c_ptr, ids_ptr, out_ptr, out_desc,
    R, S, C, H_OUT, stride_b, stride_h, stride_s, N, n_tiles,
    D: tl.constexpr, G: tl.constexpr, T: tl.constexpr, BITS: tl.constexpr,
    SYM: tl.constexpr, ROTATE: tl.constexpr, HAS_SOS: tl.constexpr, BM: tl.constexpr,
    LOG_G: tl.constexpr, FP8: tl.constexpr, CONTIG: tl.constexpr, HALF: tl.constexpr,
    TMA: tl.constexpr, BS: tl.constexpr,
):  # fmt: skip
    """Tiles of BM token-groups (flat index n = (row*S + token)*NG + g over all rows), one
    thread per token-group: its G values are a [NC, 8] block of registers (chunk c = codes
    8c..8c+7 = one word), so the unpack, the butterflies, the scale and the centroid add are
    in-thread (codes and centroid rows load as 16-byte vectors); the finished tile crosses to
    a row layout for contiguous 16-byte stores. With Launch.waves > 0 a persistent grid strides
    over the tiles."""
    LEVELS: tl.constexpr = 1 << BITS
    MASK: tl.constexpr = LEVELS - 1
    NG: tl.constexpr = D // G
    NC: tl.constexpr = G // 8
    offs_m = tl.arange(0, BM)
    offs_c = tl.arange(0, G)
    cc = tl.arange(0, NC)
    ee = tl.arange(0, 8)
    j3 = cc[None, :, None] * 8 + ee[None, None, :]  # [1, NC, 8]
    for tile in range(tl.program_id(0), n_tiles, tl.num_programs(0)):
        n = tile * BM + offs_m
        ok = n < N
        tg = n // NG  # flat token index over R*S
        g = n % NG
        row = tg // S
        tok = tg - row * S
        wp = words_ptr + n[:, None].to(tl.int64) * NC + cc[None, :]
        w = tl.load(wp, mask=ok[:, None], other=0)  # [BM, NC]: code 8c + e at bits e*BITS
        w = w.to(tl.int64) if BITS == 8 else w.to(tl.int32)  # sign bits are masked off below
        q = (w[:, :, None] >> (ee[None, None, :] * BITS)) & MASK  # [BM, NC, 8]
        q = q.to(tl.float16 if HALF else tl.float32)  # HALF only with ROTATE
        if FP8:  # e4m3 bytes decoded with integer ops (cheaper here than the fp8 convert)
            s = _e4m3(tl.load(scales_ptr + n, mask=ok, other=0).to(tl.int32))
        else:
            s = tl.load(scales_ptr + n, mask=ok, other=0.0).to(tl.float32)
        if HAS_SOS:
            s = s * tl.load(sos_ptr + row, mask=ok, other=1.0)
        lv = q - (LEVELS - 1) / 2 if SYM else q
        if ROTATE:  # H_n (s * lv) = (s / sqrt(G)) * (H_pm1 lv): exact butterflies, one multiply
            y = _fwht_rows(tl.reshape(lv, (BM, G)), G, BM, LOG_G).to(tl.float32)
            y = tl.reshape(y, (BM, NC, 8)) * (s * (1.0 / tl.sqrt(G * 1.0)))[:, None, None]
        else:
            y = lv * s[:, None, None]
        if not SYM:
            z = tl.load(zeros_ptr + n, mask=ok, other=0.0).to(tl.float32)
            if HAS_SOS:
                z = z * tl.load(sos_ptr + row, mask=ok, other=1.0)
            if ROTATE:  # H_n (z * 1) = z * sqrt(G) on column 0 only
                y += tl.where(j3 == 0, z[:, None, None] * tl.sqrt(G * 1.0), 0.0)
            else:
                y += z[:, None, None]
        for t in tl.static_range(T):
            idx = tl.load(ids_ptr + (t * R * S + tg.to(tl.int64)), mask=ok, other=0)
            cbase = ((t * R + row.to(tl.int64)) * C + idx.to(tl.int64)) * D + g * G
            cen = tl.load(c_ptr + cbase[:, None, None] + j3, mask=ok[:, None, None], other=0.0)
            y += cen.to(tl.float32)
        if CONTIG:  # out is [B, H, S, D] contiguous: token-group n's values are n*G..
            obase = n.to(tl.int64) * G
        else:
            obase = (
                (row // H_OUT).to(tl.int64) * stride_b
                + (row % H_OUT).to(tl.int64) * stride_h
                + tok.to(tl.int64) * stride_s
                + g * G
            )
        yo = tl.reshape(y.to(out_ptr.dtype.element_ty), (BM, G))
        if TMA:  # tile = BS whole tokens of [R*S, D]; the copy engine clips the last one
            out_desc.store([tile * BS, 0], tl.reshape(yo, (BS, D)))
        else:
            # stored as [BM, G] rows: the compiler moves the out-dtype tile through shared
            # memory once so that a warp's 16-byte stores are contiguous (thread-per-group
            # stores would stride 2*G bytes apart: 1.7x slower on an H200)
            tl.store(out_ptr + obase[:, None] + offs_c[None, :], yo, mask=ok[:, None])


_WORD = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def _words(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """codes as one word per 8 codes (int16 at 2 bits, int32 at 4, int64 at 8): a group's
    chunks load as one vector per thread."""
    codes = codes.contiguous()
    if codes.storage_offset() % _WORD[bits].itemsize:  # a view at an odd byte offset
        codes = codes.clone()
    return codes.view(_WORD[bits])


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
    launch: Launch = Launch(),
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
    bm = launch.block_s * ng
    n_tiles = triton.cdiv(n, bm)
    grid = n_tiles
    if launch.waves > 0 and codes.device.type == "cuda":  # CPU: TRITON_INTERPRET=1 only
        grid = min(n_tiles, launch.waves * _num_sms(codes.device.index or 0))
    fp8 = scales.dtype == torch.float8_e4m3fn
    tma = launch.tma and out.is_contiguous()
    desc = out
    if tma:
        from triton.tools.tensor_descriptor import TensorDescriptor

        desc = TensorDescriptor.from_tensor(out.view(r * s, d), [launch.block_s, d])
    _decode_kernel[(grid,)](
        _words(codes, spec.bits),
        scales.contiguous().view(torch.uint8) if fp8 else scales.contiguous(),
        scales if zeros is None else zeros.contiguous(),
        scales if scale_of_scales is None else scale_of_scales.contiguous(),
        cen,
        idt,
        out,
        desc,
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
        BM=bm,
        LOG_G=g.bit_length() - 1,
        FP8=fp8,
        CONTIG=out.is_contiguous(),
        HALF=launch.half and spec.rotate and spec.bits <= 4,
        TMA=tma,
        BS=launch.block_s,
        num_warps=launch.num_warps,
        num_stages=launch.num_stages,
    )
    return out
