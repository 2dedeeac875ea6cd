"""The k-means alternatives replaced in kernels/kmeans_triton.py, kept for tools/kmeans_sweep.py.

update_sort:           sort-based segmented sum (the product update until the one-hot
                       tensor-core sum): tokens sorted by cluster id (stable), one program
                       per (row, cluster) sums its contiguous segment in a fixed order.
first_duplicate_torch: ~10 small torch launches (int64 hash of the fp32 bits, [C, C] key
                       comparison, gather-and-compare), replaced by two Triton launches.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


def first_duplicate_torch(centroids: torch.Tensor) -> torch.Tensor:
    """int64 [R, C]: the lowest index whose centroid equals centroid c (c itself if unique);
    the first equal key's index, verified (a key collision with an earlier unequal centroid
    falls back to c itself)."""
    r, c, _ = centroids.shape
    v = centroids.float() + 0.0  # -0.0 -> +0.0: equal distances, so equal keys
    w = torch.arange(1, v.shape[-1] + 1, device=v.device, dtype=torch.int64) * 0x9E3779B1 | 1
    key = (v.view(torch.int32).long() * w).sum(-1)  # wraps on overflow: still exact per vector
    first = (key[:, :, None] == key[:, None, :]).int().argmax(-1)  # argmax: first maximum
    same = (torch.gather(v, 1, first[..., None].expand_as(v)) == v).all(-1)
    return torch.where(same, first, torch.arange(c, device=v.device).expand(r, c))


@triton.jit
def _update_sort_kernel(
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


def update_sort(
    x: torch.Tensor, ids: torch.Tensor, prev: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster means, as kmeans_ref.update (x [R, S, D], ids [R, S], prev [R, C, D]).

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
    _update_sort_kernel[(r, c)](
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
