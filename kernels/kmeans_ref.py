"""Pure-torch (fp32) reference of batched Euclidean k-means over tokens.

Shapes: x [R, S, D] (R = batch*heads rows, S tokens, D = head_dim), centroids [R, C, D].
One iteration = assign (argmin over C of ||c||^2 - 2 x.c, ties to the lowest index) + update
(mean of each cluster; an empty cluster keeps its previous centroid). Initial centroids are C
distinct tokens chosen by a seeded CPU generator, so CPU and GPU start identically; with fewer
tokens than centroids, tokens repeat and the spare centroids stay empty (duplicates).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

# Tokens per assignment chunk: bounds the [R, chunk, C] distance matrix (fp32) in memory.
ASSIGN_CHUNK = 8192


class KMeansResult(NamedTuple):
    centroids: torch.Tensor  # fp32 [R, C, D]
    iters: int  # Lloyd iterations actually run


def init_index(r: int, s: int, c: int, seed: int, period: int | None = None) -> torch.Tensor:
    """int64 [R, C]: C distinct random token indices per row (seeded CPU generator, so every
    device starts alike). With `period` (R a multiple of it) the first `period` rows' choice
    repeats: an encode of B tensors of H heads draws per head, so batching tensors (a pool
    encodes every layer's K and V in one call) picks what B separate calls would."""
    p = period or r
    if r % p:
        raise ValueError(f"init_index: {r} rows are not a multiple of period {p}")
    gen = torch.Generator().manual_seed(seed)
    if s >= c:
        idx = torch.rand(p, s, generator=gen).argsort(-1)[:, :c]
    else:
        idx = (torch.arange(c) % s).expand(p, c)
    return idx.repeat(r // p, 1)


def init_centroids(x: torch.Tensor, c: int, seed: int, period: int | None = None) -> torch.Tensor:
    """[R, C, D] initial centroids: the tokens `init_index` picks."""
    r, s, d = x.shape
    idx = init_index(r, s, c, seed, period).to(x.device)
    return torch.gather(x, 1, idx[..., None].expand(r, c, d))


def assign(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """int64 cluster ids [R, S]: nearest centroid by Euclidean distance (fp32)."""
    c_sq = centroids.square().sum(-1)  # [R, C]
    out = []
    for start in range(0, x.shape[1], ASSIGN_CHUNK):
        xc = x[:, start : start + ASSIGN_CHUNK]
        dist = c_sq[:, None, :] - 2.0 * torch.bmm(xc, centroids.transpose(1, 2))
        out.append(dist.argmin(-1))
    return torch.cat(out, 1)


def update(
    x: torch.Tensor, ids: torch.Tensor, prev: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(new centroids [R, C, D], counts [R, C]): cluster means; empty clusters keep `prev`."""
    r, c, d = prev.shape
    sums = torch.zeros(r, c, d, device=x.device, dtype=torch.float32)
    sums.scatter_add_(1, ids[..., None].expand(-1, -1, d), x)
    counts = torch.zeros(r, c, device=x.device, dtype=torch.float32)
    counts.scatter_add_(1, ids, torch.ones_like(ids, dtype=torch.float32))
    mean = sums / counts.clamp(min=1)[..., None]
    return torch.where(counts[..., None] > 0, mean, prev), counts


def kmeans(x: torch.Tensor, init: torch.Tensor, iters: int, tol: float) -> KMeansResult:
    """Lloyd's algorithm from `init`; stops after `iters` or when < tol of tokens move."""
    cent, prev_ids = init.to(torch.float32), None
    done = 0
    while done < iters:
        ids = assign(x, cent)
        cent, _ = update(x, ids, cent)
        done += 1
        if prev_ids is not None and (ids != prev_ids).float().mean().item() < tol:
            break
        prev_ids = ids
    return KMeansResult(cent, done)
