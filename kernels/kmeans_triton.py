"""Triton k-means over tokens: assignment, centroid update and Lloyd's loop (mirrors kmeans_ref).

Shapes: x [R, S, D] (R = batch*heads rows, fp32 / bf16 / fp16), centroids [R, C, D].

    tables:  two launches per centroid set: ||c||^2 (fp32) and a hash of each centroid's bits,
             then the lowest index whose centroid equals c exactly (hash matches verified
             element by element), used to remap the winner so exact duplicates tie low.
    assign:  one program per (block of BLOCK_S tokens, row); loops over blocks of BLOCK_C
             centroids, dist = ||c||^2 - 2 x.c in fp32, running argmin (ties to the lowest
             index, like torch.argmin). fp32 centroids: bf16x3 for bf16 x on GPU (each centroid
             split exactly into three bf16 parts, three dots), else tl.dot on fp32 operands
             (tf32x3 on GPU, ieee on CPU). x and centroids in the same 16-bit dtype (the final
             assignment with stored bf16 centroids): one 16-bit tensor-core dot, x's tile loaded
             once; products of 16-bit values are exact in fp32 and the sums are fp32.
    update:  one-hot segmented sum (kmeans_update_triton): onehot[C, S] @ x on tensor cores in a
             fixed order, so the same span gives the same centroids (and codes) run to run.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl

from .kmeans_ref import KMeansResult, init_index
from .kmeans_update_triton import dot16, split3, tensor_cores, update

__all__ = ["assign", "first_duplicate", "init_centroids", "kmeans", "update"]

# assign's `precision`: tl.dot input precisions on fp32 operands, or the 16-bit kernel's modes.
FP32_PRECISIONS = ("ieee", "tf32", "tf32x3")
NATIVE = "native"  # x and centroids in one 16-bit dtype, used as stored
BF16X3 = "bf16x3"  # bf16 x; fp32 centroids as three bf16 parts (exact), three dots


@dataclass(frozen=True, slots=True)
class Blocks:
    """Launch shape of an assign kernel."""

    block_s: int
    """Tokens per program."""
    block_c: int
    """Centroids per dot (clamped to the next power of two of C, at least 16)."""
    block_k: int
    """D per dot on the fp32 path (whole fp32 [block_s, D] operands spill); 16-bit: all of D."""
    num_warps: int
    num_stages: int


# fp32: the H100 sweep of tools/decode_sweep.py. native / bf16x3: lent H200, 2026-12-02
# (tools/kmeans_sweep.py; C = 256): native [12, 37440, 128] 0.139 ms, [720, 9360, 128] 1.59 ms
# (128/128/w8: 0.170 / 2.32); bf16x3 0.259 / 3.54 ms (128/64/w4: 0.360 / 5.03); tf32x3 on the
# same fp32 centroids 0.540 / 7.86 ms.
CONFIGS = {
    "fp32": Blocks(64, 128, 32, 4, 2),
    NATIVE: Blocks(128, 64, 0, 4, 3),
    BF16X3: Blocks(128, 64, 0, 8, 2),
}
SMEM_BUDGET = 160 * 1024  # bytes the 16-bit kernel may stage (H100/H200 have 227 KB per block)


def _fit_smem(bs: int, bc: int, st: int, d_pad: int, c_bytes: int) -> tuple[int, int, int]:
    """Shrink (block_c, then stages, then block_s) until the x tile and the staged centroid
    tiles fit SMEM_BUDGET; D <= 128 with the CONFIGS fits as is."""
    while bs * d_pad * 2 + st * bc * d_pad * c_bytes > SMEM_BUDGET:
        if bc > 16:
            bc //= 2
        elif st > 1:
            st -= 1
        elif bs > 16:
            bs //= 2
        else:
            break
    return bs, bc, st


@triton.jit
def _tables_kernel(c_ptr, sq_ptr, key_ptr, C, D, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr):
    """||c||^2 and an int64 key of c's fp32 bits, -0.0 read as +0.0: equal vectors, equal keys
    (integer sums wrap, in any order alike); unequal vectors rarely collide."""
    row = tl.program_id(1).to(tl.int64)
    offs_c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = offs_c < C
    sq = tl.zeros((BLOCK_C,), tl.float32)
    key = tl.zeros((BLOCK_C,), tl.int64)
    for k0 in range(0, D, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        v = tl.load(
            c_ptr + row * C * D + offs_c[:, None] * D + offs_k[None, :],
            mask=c_ok[:, None] & (offs_k < D)[None, :],
            other=0.0,
        ).to(tl.float32)
        sq += tl.sum(v * v, axis=1)
        bits = v.to(tl.int32, bitcast=True)
        bits = tl.where((bits & 0x7FFFFFFF) == 0, 0, bits).to(tl.int64)  # -0.0 -> +0.0
        w = (offs_k.to(tl.int64) + 1) * 0x61C88647  # odd per-dimension weights
        key += tl.sum(bits * w[None, :], axis=1)
    tl.store(sq_ptr + row * C + offs_c, sq, mask=c_ok)
    tl.store(key_ptr + row * C + offs_c, key, mask=c_ok)


@triton.jit
def _first_dup_kernel(c_ptr, key_ptr, out_ptr, C, D, BLOCK: tl.constexpr, BLOCK_K: tl.constexpr):
    """out[c] = lowest j <= c with centroid j == centroid c elementwise (float ==: -0.0 equals
    +0.0, NaN nothing). Keys select the candidate blocks; only those compare vectors."""
    row = tl.program_id(1).to(tl.int64)
    i0 = tl.program_id(0) * BLOCK
    offs_i = i0 + tl.arange(0, BLOCK)
    i_ok = offs_i < C
    c_row = c_ptr + row * C * D
    key_i = tl.load(key_ptr + row * C + offs_i, mask=i_ok, other=0)
    first = offs_i
    for j0 in range(0, i0 + BLOCK, BLOCK):  # blocks up to the diagonal: a first copy has j < i
        offs_j = j0 + tl.arange(0, BLOCK)
        key_j = tl.load(key_ptr + row * C + offs_j, mask=offs_j < C, other=0)
        eq = (key_i[:, None] == key_j[None, :]) & (offs_j[None, :] < offs_i[:, None])
        eq = eq & i_ok[:, None]
        if tl.max(eq.to(tl.int32)) > 0:  # rare: duplicates or a key collision
            for k0 in range(0, D, BLOCK_K):
                offs_k = k0 + tl.arange(0, BLOCK_K)
                k_ok = (offs_k < D)[None, :]
                ci = tl.load(
                    c_row + offs_i[:, None] * D + offs_k[None, :],
                    mask=i_ok[:, None] & k_ok,
                    other=0.0,
                ).to(tl.float32)
                cj = tl.load(
                    c_row + offs_j[:, None] * D + offs_k[None, :],
                    mask=(offs_j < C)[:, None] & k_ok,
                    other=0.0,
                ).to(tl.float32)
                ne = (ci[:, None, :] != cj[None, :, :]).to(tl.int32)
                eq = eq & (tl.max(ne, axis=2) == 0)
            first = tl.minimum(first, tl.min(tl.where(eq, offs_j[None, :], C), axis=1))
    tl.store(out_ptr + row * C + offs_i, first, mask=i_ok)


def _tables(centroids: torch.Tensor, first_dtype: torch.dtype = torch.int32):
    """(||c||^2 fp32 [R, C], first duplicate [R, C] of `first_dtype`): two launches."""
    r, c, d = centroids.shape
    centroids = centroids.contiguous()
    sq = torch.empty(r, c, dtype=torch.float32, device=centroids.device)
    key = torch.empty(r, c, dtype=torch.int64, device=centroids.device)
    first = torch.empty(r, c, dtype=first_dtype, device=centroids.device)
    _tables_kernel[(triton.cdiv(c, 64), r)](centroids, sq, key, c, d, BLOCK_C=64, BLOCK_K=32)
    _first_dup_kernel[(triton.cdiv(c, 32), r)](centroids, key, first, c, d, BLOCK=32, BLOCK_K=8)
    return sq, first


def first_duplicate(centroids: torch.Tensor) -> torch.Tensor:
    """int64 [R, C]: the lowest index whose centroid equals centroid c (c itself if unique).

    Duplicates are common (fewer tokens than centroids, empty clusters keeping their place) and
    must tie to the lowest index, but a blocked dot may round two identical columns differently.
    """
    return _tables(centroids, torch.int64)[1]


@triton.jit
def _argmin_step(dot, c_sq, offs_c, C, best, best_id):
    """Fold one centroid block's distances into the running (best, best_id) of each token."""
    dist = tl.where(offs_c[None, :] < C, c_sq[None, :] - 2.0 * dot, float("inf"))
    blk_best = tl.min(dist, axis=1)
    # lowest index among the block's minima (explicit, so ties never depend on tl.argmin)
    blk_id = tl.min(tl.where(dist == blk_best[:, None], offs_c[None, :], C), axis=1)
    better = blk_best < best  # strict: an equal distance in a later block keeps the earlier id
    return tl.where(better, blk_best, best), tl.where(better, blk_id, best_id)


@triton.jit
def _assign_kernel(
    x_ptr,
    c_ptr,
    sq_ptr,
    first_ptr,
    out_ptr,
    S,
    C,
    D,
    BLOCK_S: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
):
    row = tl.program_id(1).to(tl.int64)
    offs_s = tl.program_id(0) * BLOCK_S + tl.arange(0, BLOCK_S)
    s_ok = offs_s < S
    x_row = x_ptr + row * S * D
    c_row = c_ptr + row * C * D
    best = tl.full((BLOCK_S,), float("inf"), tl.float32)
    best_id = tl.zeros((BLOCK_S,), tl.int32)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        c_ok = offs_c < C
        dot = tl.zeros((BLOCK_S, BLOCK_C), tl.float32)
        # D in chunks of BLOCK_K: whole [BLOCK_S, D] fp32 operands spill on the FMA (ieee) path;
        # the x chunks are re-read from L1/L2 for every centroid block.
        for k0 in range(0, D, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_ok = offs_k < D
            xk = tl.load(
                x_row + offs_s[:, None] * D + offs_k[None, :],
                mask=s_ok[:, None] & k_ok[None, :],
                other=0.0,
            ).to(tl.float32)
            ck = tl.load(
                c_row + offs_c[:, None] * D + offs_k[None, :],
                mask=c_ok[:, None] & k_ok[None, :],
                other=0.0,
            ).to(tl.float32)
            dot = tl.dot(xk, tl.trans(ck), dot, input_precision=PRECISION)
        c_sq = tl.load(sq_ptr + row * C + offs_c, mask=c_ok, other=0.0)
        best, best_id = _argmin_step(dot, c_sq, offs_c, C, best, best_id)
    best_id = tl.load(first_ptr + row * C + best_id, mask=s_ok, other=0)  # duplicates tie low
    tl.store(out_ptr + row * S + offs_s, best_id.to(tl.int64), mask=s_ok)


@triton.jit
def _assign16_kernel(
    x_ptr,
    c_ptr,
    sq_ptr,
    first_ptr,
    out_ptr,
    S,
    C,
    D,
    BLOCK_S: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_D: tl.constexpr,
    SPLIT_C: tl.constexpr,
    TC: tl.constexpr,
):
    """16-bit x tile loaded once; per centroid block one 16-bit dot (SPLIT_C: fp32 centroids
    as hi + mid + lo bf16, three dots, smallest first). TC: tensor cores (else upcast)."""
    row = tl.program_id(1).to(tl.int64)
    offs_s = tl.program_id(0) * BLOCK_S + tl.arange(0, BLOCK_S)
    s_ok = offs_s < S
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    c_row = c_ptr + row * C * D
    xt = tl.load(
        x_ptr + row * S * D + offs_s[:, None] * D + offs_d[None, :],
        mask=s_ok[:, None] & d_ok[None, :],
        other=0.0,
    )
    best = tl.full((BLOCK_S,), float("inf"), tl.float32)
    best_id = tl.zeros((BLOCK_S,), tl.int32)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        c_ok = offs_c < C
        ct = tl.load(
            c_row + offs_c[:, None] * D + offs_d[None, :],
            mask=c_ok[:, None] & d_ok[None, :],
            other=0.0,
        )
        dot = tl.zeros((BLOCK_S, BLOCK_C), tl.float32)
        if SPLIT_C:
            hi, mid, lo = split3(ct)
            dot = dot16(xt, tl.trans(lo), dot, TC)
            dot = dot16(xt, tl.trans(mid), dot, TC)
            dot = dot16(xt, tl.trans(hi), dot, TC)
        else:
            dot = dot16(xt, tl.trans(ct), dot, TC)
        c_sq = tl.load(sq_ptr + row * C + offs_c, mask=c_ok, other=0.0)
        best, best_id = _argmin_step(dot, c_sq, offs_c, C, best, best_id)
    best_id = tl.load(first_ptr + row * C + best_id, mask=s_ok, other=0)  # duplicates tie low
    tl.store(out_ptr + row * S + offs_s, best_id.to(tl.int64), mask=s_ok)


def default_precision(x: torch.Tensor, centroids: torch.Tensor) -> str:
    """native for one 16-bit dtype on both sides; bf16 x with fp32 centroids on GPU: bf16x3
    (exact products, 2.1x faster than tf32x3 on an H200); else tf32x3 on GPU, ieee on CPU."""
    if x.dtype == centroids.dtype and x.dtype in (torch.bfloat16, torch.float16):
        return NATIVE
    if x.device.type != "cpu" and x.dtype == torch.bfloat16:
        return BF16X3
    return "ieee" if x.device.type == "cpu" else "tf32x3"  # H100 12x37440x128: 1.6 vs 0.6 ms


def _check_precision(x: torch.Tensor, centroids: torch.Tensor, precision: str) -> None:
    if precision == NATIVE and not (
        x.dtype == centroids.dtype and x.dtype in (torch.bfloat16, torch.float16)
    ):
        raise ValueError(f"assign: precision 'native' needs one 16-bit dtype, got {x.dtype}")
    if precision == BF16X3 and x.dtype != torch.bfloat16:
        raise ValueError(f"assign: precision 'bf16x3' needs bf16 x, got {x.dtype}")
    if precision not in (*FP32_PRECISIONS, NATIVE, BF16X3):
        raise ValueError(f"assign: precision {precision!r}: use {FP32_PRECISIONS}, native, bf16x3")


def assign(
    x: torch.Tensor,
    centroids: torch.Tensor,
    precision: str | None = None,
    block_s: int | None = None,
    block_c: int | None = None,
    block_k: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
) -> torch.Tensor:
    """Nearest centroid of every token, as kmeans_ref.assign.

    x: [R, S, D] fp32 / bf16 / fp16; centroids: [R, C, D] fp32 / bf16 / fp16. Returns int64
    ids [R, S]. `precision`: "ieee" (exact fp32 products), "tf32x3" (tensor cores, ~fp32; 99.9996%
    equal ids at full size, the rest near-ties) or "tf32" on fp32-read operands; "native" (x and
    centroids in one 16-bit dtype: exact products, fp32 sums); "bf16x3" (bf16 x, fp32 centroids
    split exactly into three bf16 parts). None: default_precision. Block sizes None: CONFIGS.
    Exact duplicate centroids always resolve to the lowest index (see first_duplicate).
    Bytes: reads R*S*D*x.itemsize (+ L1/L2 re-reads per centroid block on the fp32 path) +
    R*C*D*c.itemsize * ceil(S/BLOCK_S) (L2-resident table), writes R*S*8.
    """
    r, s, d = x.shape
    c = centroids.shape[1]
    precision = precision or default_precision(x, centroids)
    _check_precision(x, centroids, precision)
    mode = precision if precision in (NATIVE, BF16X3) else "fp32"
    given = dict(block_s=block_s, block_c=block_c, block_k=block_k, num_warps=num_warps)
    given["num_stages"] = num_stages
    cfg = replace(CONFIGS[mode], **{k: v for k, v in given.items() if v is not None})
    bs, nw, st = cfg.block_s, cfg.num_warps, cfg.num_stages
    bc = min(cfg.block_c, max(16, triton.next_power_of_2(c)))
    x, centroids = x.contiguous(), centroids.contiguous()
    c_sq, first = _tables(centroids)
    out = torch.empty(r, s, dtype=torch.int64, device=x.device)
    args = (x, centroids, c_sq, first, out, s, c, d)
    # grids: token blocks fastest, so one row's programs run together and share its table
    if mode == "fp32":
        _assign_kernel[(triton.cdiv(s, bs), r)](
            *args, BLOCK_S=bs, BLOCK_C=bc, BLOCK_K=cfg.block_k, PRECISION=precision, num_warps=nw,
            num_stages=st,
        )  # fmt: skip
    else:
        bd = max(16, triton.next_power_of_2(d))
        bs, bc, st = _fit_smem(bs, bc, st, bd, centroids.element_size())
        _assign16_kernel[(triton.cdiv(s, bs), r)](
            *args, BLOCK_S=bs, BLOCK_C=bc, BLOCK_D=bd, SPLIT_C=mode == BF16X3,
            TC=tensor_cores(x), num_warps=nw, num_stages=st,
        )  # fmt: skip
    return out


@functools.lru_cache(maxsize=64)
def _init_index(r: int, s: int, c: int, seed: int, period: int | None, device: torch.device):
    """kmeans_ref.init_index on `device`, cached: it depends only on shapes and seed."""
    return init_index(r, s, c, seed, period).to(device)


def init_centroids(x: torch.Tensor, c: int, seed: int, period: int | None = None) -> torch.Tensor:
    """Same tokens as kmeans_ref.init_centroids (fp32 [R, C, D]), without redrawing per call."""
    r, s, d = x.shape
    idx = _init_index(r, s, c, seed, period, x.device)
    return torch.gather(x, 1, idx[..., None].expand(r, c, d)).to(torch.float32)


def kmeans(
    x: torch.Tensor, init: torch.Tensor, iters: int, tol: float, precision: str | None = None
) -> KMeansResult:
    """Lloyd's algorithm from `init` [R, C, D]; stops after `iters` or when < tol of tokens move.

    x: [R, S, D] fp32 or bf16. Returns fp32 centroids [R, C, D] and the iterations run.
    """
    cent, prev_ids = init.to(torch.float32), None
    n = 0
    while n < iters:
        n += 1
        ids = assign(x, cent, precision)
        cent, _ = update(x, ids, cent)
        # the tolerance test is a host sync: skip it where the loop ends anyway (at 2
        # iterations that is the only test, and the GPU would idle while the final assign
        # and quantize kernels are launched)
        if n < iters and prev_ids is not None and (ids != prev_ids).float().mean().item() < tol:
            break
        prev_ids = ids
    return KMeansResult(cent, n)
