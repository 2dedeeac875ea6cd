"""Triton k-means over tokens: assignment, centroid update and Lloyd's loop (mirrors kmeans_ref).

Shapes: x [R, S, D] (R = batch*heads rows, fp32 or bf16), centroids [R, C, D].

    assign:  one program per (row, block of BLOCK_S tokens); loops over blocks of BLOCK_C
             centroids, dist = ||c||^2 - 2 x.c in fp32 (tl.dot, ieee by default), running argmin
             (ties to the lowest index, like torch.argmin).
    update:  sort-based segmented sum. Tokens are sorted by cluster id (stable), and one program
             per (row, cluster) sums its contiguous segment in a fixed order. Chosen over
             tl.atomic_add because float atomics add in a scheduling-dependent order: the same
             span would give different centroids (and codes) from run to run, and the spec
             promises reproducible codes for a fixed seed. The sort costs one extra pass over
             ids (S * 8 bytes per row), small next to the x reads.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .kmeans_ref import KMeansResult, init_index


def first_duplicate(centroids: torch.Tensor) -> torch.Tensor:
    """int64 [R, C]: the lowest index whose centroid equals centroid c (c itself if unique).

    Duplicates are common (fewer tokens than centroids, empty clusters keeping their place) and
    must tie to the lowest index, but a blocked dot (BLAS in the interpreter) may round two
    identical columns differently. Exact int64 hash of the fp32 bits, verified by comparison.
    """
    r, c, _ = centroids.shape
    v = centroids.float() + 0.0  # -0.0 -> +0.0: equal distances, so equal keys
    w = torch.arange(1, v.shape[-1] + 1, device=v.device, dtype=torch.int64) * 0x9E3779B1 | 1
    key = (v.view(torch.int32).long() * w).sum(-1)  # wraps on overflow: still exact per vector
    first = (key[:, :, None] == key[:, None, :]).int().argmax(-1)  # argmax: first maximum
    same = (torch.gather(v, 1, first[..., None].expand_as(v)) == v).all(-1)
    return torch.where(same, first, torch.arange(c, device=v.device).expand(r, c))


@triton.jit
def _assign_kernel(
    x_ptr,
    c_ptr,
    out_ptr,
    S,
    C,
    D,
    BLOCK_S: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    offs_s = tl.program_id(1) * BLOCK_S + tl.arange(0, BLOCK_S)
    s_ok = offs_s < S
    x_row = x_ptr + row * S * D
    c_row = c_ptr + row * C * D
    best = tl.full((BLOCK_S,), float("inf"), tl.float32)
    best_id = tl.zeros((BLOCK_S,), tl.int32)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        c_ok = offs_c < C
        dot = tl.zeros((BLOCK_S, BLOCK_C), tl.float32)
        c_sq = tl.zeros((BLOCK_C,), tl.float32)
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
            c_sq += tl.sum(ck * ck, axis=1)
            dot = tl.dot(xk, tl.trans(ck), dot, input_precision=PRECISION)
        dist = tl.where(c_ok[None, :], c_sq[None, :] - 2.0 * dot, float("inf"))
        blk_best = tl.min(dist, axis=1)
        # lowest index among the block's minima (explicit, so ties never depend on tl.argmin)
        blk_id = tl.min(tl.where(dist == blk_best[:, None], offs_c[None, :], C), axis=1)
        better = blk_best < best  # strict: an equal distance in a later block keeps the earlier id
        best_id = tl.where(better, blk_id, best_id)
        best = tl.where(better, blk_best, best)
    tl.store(out_ptr + row * S + offs_s, best_id.to(tl.int64), mask=s_ok)


def assign(
    x: torch.Tensor,
    centroids: torch.Tensor,
    precision: str | None = None,
    block_s: int = 64,
    block_c: int = 128,
    block_k: int = 32,
    num_warps: int = 4,
    num_stages: int = 2,
) -> torch.Tensor:
    """Nearest centroid of every token, as kmeans_ref.assign.

    x: [R, S, D] fp32 or bf16 (read as fp32); centroids: [R, C, D] fp32/bf16/fp16.
    Returns int64 ids [R, S]. `precision` is tl.dot's input_precision: "ieee" (exact fp32
    products, the reference's math) or "tf32x3" (tensor cores, ~fp32 accuracy, faster on GPU;
    99.9996% equal ids at full size, the rest near-ties); None: tf32x3 on GPU, ieee on CPU.
    Exact duplicate centroids always resolve to the lowest index (see first_duplicate).
    Bytes: reads R*S*D*x.itemsize (L1/L2 re-reads per centroid block aside) + R*C*D*c.itemsize
    * ceil(S/BLOCK_S) (L2-resident table), writes R*S*8.
    """
    r, s, d = x.shape
    c = centroids.shape[1]
    if precision is None:  # H100, 12 x 37440 x 128, C=256: ieee 1.6 ms, tf32x3 0.6 ms
        precision = "ieee" if x.device.type == "cpu" else "tf32x3"
    x, centroids = x.contiguous(), centroids.contiguous()
    out = torch.empty(r, s, dtype=torch.int64, device=x.device)
    grid = (r, triton.cdiv(s, block_s))
    _assign_kernel[grid](
        x,
        centroids,
        out,
        s,
        c,
        d,
        BLOCK_S=block_s,
        BLOCK_C=block_c,
        BLOCK_K=block_k,
        PRECISION=precision,
        num_warps=num_warps,
        num_stages=num_stages,
    )
    return torch.gather(first_duplicate(centroids), 1, out)


@triton.jit
def _update_kernel(
    x_ptr,
    order_ptr,
    start_ptr,
    count_ptr,
    prev_ptr,
    out_ptr,
    S,
    C,
    D,
    BLOCK_S: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    k = tl.program_id(1)
    start = tl.load(start_ptr + row * C + k)
    n = tl.load(count_ptr + row * C + k)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    acc = tl.zeros((BLOCK_S, BLOCK_D), tl.float32)
    for i in range(0, n, BLOCK_S):
        offs = i + tl.arange(0, BLOCK_S)
        ok = offs < n
        tok = tl.load(order_ptr + row * S + start + offs, mask=ok, other=0)
        acc += tl.load(
            x_ptr + row * S * D + tok[:, None] * D + offs_d[None, :],
            mask=ok[:, None] & d_ok[None, :],
            other=0.0,
        ).to(tl.float32)
    total = tl.sum(acc, axis=0)
    prev = tl.load(prev_ptr + (row * C + k) * D + offs_d, mask=d_ok, other=0.0)
    mean = tl.math.div_rn(total, tl.maximum(n, 1).to(tl.float32))  # IEEE division, as torch
    tl.store(out_ptr + (row * C + k) * D + offs_d, tl.where(n > 0, mean, prev), mask=d_ok)


def update(
    x: torch.Tensor, ids: torch.Tensor, prev: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster means, as kmeans_ref.update.

    x: [R, S, D] fp32/bf16; ids: [R, S] integer in [0, C); prev: [R, C, D] fp32.
    Returns (centroids fp32 [R, C, D], counts fp32 [R, C]); empty clusters keep `prev`.
    Bytes: reads R*S*D*x.itemsize (gathered rows) + R*S*(8+8) (ids, sort order) + R*C*D*4,
    writes R*C*D*4.
    """
    r, s, d = x.shape
    c = prev.shape[1]
    ids = ids.long()
    order = torch.sort(ids, dim=1, stable=True).indices.to(torch.int32).contiguous()
    counts = torch.zeros(r, c, dtype=torch.int32, device=x.device)
    counts.scatter_add_(1, ids, torch.ones_like(ids, dtype=torch.int32))  # ints: deterministic
    starts = (torch.cumsum(counts, 1, dtype=torch.int32) - counts).contiguous()
    prev = prev.to(torch.float32).contiguous()
    out = torch.empty_like(prev)
    _update_kernel[(r, c)](
        x.contiguous(),
        order,
        starts,
        counts,
        prev,
        out,
        s,
        c,
        d,
        BLOCK_S=32,
        BLOCK_D=triton.next_power_of_2(d),
    )
    return out, counts.to(torch.float32)


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
        if prev_ids is not None and (ids != prev_ids).float().mean().item() < tol:
            break
        prev_ids = ids
    return KMeansResult(cent, n)
