"""Triton k-means centroid update: a one-hot segmented sum on tensor cores (mirrors
kmeans_ref.update).

    grid (block of BLOCK_C centroids, part of the tokens, row): each program walks its token
    range in blocks of BLOCK_S, onehot[BLOCK_C, BLOCK_S] = (ids == c) in x's 16-bit dtype (0 and
    1 are exact), acc[BLOCK_C, D] += onehot @ x in fp32. One part: the program divides and
    writes the means. Several parts (few rows: fill the GPU): partial sums [R, P, C, D] and
    counts, then a second launch adds the parts in order and divides.

Every sum is taken in an order fixed by the shapes alone (not by scheduling, as float atomics
would be), so the same span gives the same centroids (and codes) run to run, which the spec's
fixed seed promises. fp32 x (residual stages) is split exactly into three bf16 parts, three
dots: still exact products. Division is IEEE (div_rn), as torch's.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Programs to aim for when splitting tokens into parts (4 per SM of a 132-SM H100/H200): a
# constant, not the device's SM count, so the summation order (and the bits) depend on shapes.
TARGET_PROGRAMS = 528


def tensor_cores(x: torch.Tensor) -> bool:
    """16-bit dots on tensor cores: compiled for CUDA, not under TRITON_INTERPRET (which gets
    16-bit dots wrong, so they are upcast to fp32 there)."""
    return x.is_cuda and not triton.knobs.runtime.interpret


@triton.jit
def split3(v):
    """fp32 v -> bf16 (hi, mid, lo) with hi + mid + lo == v exactly (each residual is exact in
    fp32 and has at most 16, then 8, significant bits)."""
    hi = v.to(tl.bfloat16)
    rest = v - hi.to(tl.float32)
    mid = rest.to(tl.bfloat16)
    lo = (rest - mid.to(tl.float32)).to(tl.bfloat16)
    return hi, mid, lo


@triton.jit
def dot16(a, b, acc, TC: tl.constexpr):
    """acc + a @ b for 16-bit a, b: tensor cores (exact products, fp32 sums), or both upcast to
    fp32 with ieee products when TC is off (the interpreter gets 16-bit dots wrong)."""
    if TC:
        acc = tl.dot(a, b, acc)
    else:
        acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return acc


@triton.jit
def _mean_or_prev(acc, n, prev_ptr, row, C, D, offs_c, offs_d, mask):
    """Cluster means acc / n (IEEE division, as torch); an empty cluster keeps prev."""
    prev = tl.load(prev_ptr + (row * C + offs_c)[:, None] * D + offs_d[None, :], mask=mask)
    mean = tl.math.div_rn(acc, tl.maximum(n, 1).to(tl.float32)[:, None])
    return tl.where((n > 0)[:, None], mean, prev)


@triton.jit
def _onehot_sum_kernel(
    x_ptr,
    ids_ptr,
    prev_ptr,
    sum_ptr,
    cnt_ptr,
    S,
    C,
    D,
    TOKENS,
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_D: tl.constexpr,
    SPLIT_X: tl.constexpr,
    TC: tl.constexpr,
    FINAL: tl.constexpr,
):
    part = tl.program_id(1)
    row = tl.program_id(2).to(tl.int64)
    offs_c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = offs_c < C
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    acc = tl.zeros((BLOCK_C, BLOCK_D), tl.float32)
    n = tl.zeros((BLOCK_C,), tl.int32)
    start = part * TOKENS
    end = tl.minimum(start + TOKENS, S)
    for s0 in range(start, end, BLOCK_S):
        offs_s = s0 + tl.arange(0, BLOCK_S)
        s_ok = offs_s < end
        ids = tl.load(ids_ptr + row * S + offs_s, mask=s_ok, other=-1).to(tl.int32)
        hit = offs_c[:, None] == ids[None, :]  # [BLOCK_C, BLOCK_S]
        n += tl.sum(hit.to(tl.int32), axis=1)
        onehot = tl.where(hit, 1.0, 0.0)  # via fp32: the interpreter casts bool to bf16 as 0
        xt = tl.load(
            x_ptr + row * S * D + offs_s[:, None] * D + offs_d[None, :],
            mask=s_ok[:, None] & d_ok[None, :],
            other=0.0,
        )
        if SPLIT_X:  # fp32 x: three exact bf16 parts, smallest first
            hi, mid, lo = split3(xt)
            onehot = onehot.to(tl.bfloat16)
            acc = dot16(onehot, lo, acc, TC)
            acc = dot16(onehot, mid, acc, TC)
            acc = dot16(onehot, hi, acc, TC)
        else:
            acc = dot16(onehot.to(xt.dtype), xt, acc, TC)
    mask = c_ok[:, None] & d_ok[None, :]
    if FINAL:
        acc = _mean_or_prev(acc, n, prev_ptr, row, C, D, offs_c, offs_d, mask)
    base = (row * tl.num_programs(1) + part) * C + offs_c  # FINAL: one part, out's layout
    tl.store(sum_ptr + base[:, None] * D + offs_d[None, :], acc, mask=mask)
    tl.store(cnt_ptr + base, n.to(cnt_ptr.dtype.element_ty), mask=c_ok)


@triton.jit
def _finish_kernel(
    sum_ptr,
    cnt_ptr,
    prev_ptr,
    out_ptr,
    counts_ptr,
    C,
    D,
    PARTS,
    BLOCK_C: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Adds the parts in order 0, 1, ... (deterministic), then divides as the FINAL case."""
    row = tl.program_id(1).to(tl.int64)
    offs_c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = offs_c < C
    offs_d = tl.arange(0, BLOCK_D)
    mask = c_ok[:, None] & (offs_d < D)[None, :]
    acc = tl.zeros((BLOCK_C, BLOCK_D), tl.float32)
    n = tl.zeros((BLOCK_C,), tl.int32)
    for p in range(0, PARTS):
        base = (row * PARTS + p) * C + offs_c
        acc += tl.load(sum_ptr + base[:, None] * D + offs_d[None, :], mask=mask, other=0.0)
        n += tl.load(cnt_ptr + base, mask=c_ok, other=0)
    acc = _mean_or_prev(acc, n, prev_ptr, row, C, D, offs_c, offs_d, mask)
    tl.store(out_ptr + (row * C + offs_c)[:, None] * D + offs_d[None, :], acc, mask=mask)
    tl.store(counts_ptr + row * C + offs_c, n.to(tl.float32), mask=c_ok)


def _parts(r: int, s: int, c_blocks: int, block_s: int, parts: int | None) -> tuple[int, int]:
    """(parts, tokens per part): enough programs for the GPU, whole blocks of tokens each."""
    if parts is None:
        parts = triton.cdiv(TARGET_PROGRAMS, r * c_blocks)
    parts = max(1, min(parts, triton.cdiv(s, block_s)))
    tokens = triton.cdiv(triton.cdiv(max(s, 1), parts), block_s) * block_s
    return triton.cdiv(max(s, 1), tokens), tokens


def update(
    x: torch.Tensor,
    ids: torch.Tensor,
    prev: torch.Tensor,
    block_c: int = 128,
    block_s: int = 32,
    parts: int | None = None,
    num_warps: int = 4,
    num_stages: int = 3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster means, as kmeans_ref.update. Default launch: lent H200, 2026-12-02, C = 256
    (tools/kmeans_sweep.py): 0.125 ms on [12, 37440, 128] bf16, 1.70 ms on [720, 9360, 128]
    (the sort-based update: 0.266 / 2.22 ms; 128 tokens x 8 warps: 0.218 / 2.78).

    x: [R, S, D] fp32 / bf16 / fp16; ids: [R, S] integer in [0, C); prev: [R, C, D].
    Returns (centroids fp32 [R, C, D], counts fp32 [R, C]); empty clusters keep `prev`.
    `parts`: token parts per row (None: enough for TARGET_PROGRAMS programs).
    Bytes: reads R*S*D*x.itemsize * ceil(C/block_c) (the re-reads mostly from L2) + R*S*8 +
    R*C*D*4; writes R*C*D*4 (one part) or R*P*C*D*4, read back once, and R*C*D*4 (P parts).
    """
    r, s, d = x.shape
    c = prev.shape[1]
    bd = max(16, triton.next_power_of_2(d))
    bc = min(block_c, max(16, triton.next_power_of_2(c)))
    if bd > 128:  # acc [block_c, D] fp32 is in registers: fewer centroids (and tokens) per program
        bc, block_s = max(16, min(bc, 16384 // bd)), max(16, min(block_s, 8192 // bd))
    c_blocks = triton.cdiv(c, bc)
    n_parts, tokens = _parts(r, s, c_blocks, block_s, parts)
    x = x.contiguous()
    ids = (ids if ids.dtype in (torch.int32, torch.int64) else ids.long()).contiguous()
    prev = prev.to(torch.float32).contiguous()
    out = torch.empty_like(prev)
    counts = torch.empty(r, c, dtype=torch.float32, device=x.device)
    final = n_parts == 1
    if final:
        sums, cnts = out, counts
    else:
        sums = torch.empty(r, n_parts, c, d, dtype=torch.float32, device=x.device)
        cnts = torch.empty(r, n_parts, c, dtype=torch.int32, device=x.device)
    _onehot_sum_kernel[(c_blocks, n_parts, r)](
        x, ids, prev, sums, cnts, s, c, d, tokens, BLOCK_C=bc, BLOCK_S=block_s, BLOCK_D=bd,
        SPLIT_X=x.dtype == torch.float32, TC=tensor_cores(x), FINAL=final, num_warps=num_warps,
        num_stages=num_stages,
    )  # fmt: skip
    if not final:
        _finish_kernel[
            (triton.cdiv(c, 16), r)
        ](  # [16, D] tiles: R * C/16 programs stream the parts
            sums, cnts, prev, out, counts, c, d, n_parts, BLOCK_C=16, BLOCK_D=bd
        )
    return out, counts
