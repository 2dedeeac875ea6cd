"""Triton k-means (assign, update, Lloyd loop) against kmeans_ref, on tiny CPU shapes."""

from __future__ import annotations

import pytest
import torch
from conftest import tol

from kernels import kmeans_ref as km
from kernels import kmeans_triton as kt


def _x(r=2, s=37, d=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(r, 5, d, generator=g) * 2
    ids = torch.randint(0, 5, (r, s), generator=g)
    return torch.gather(centers, 1, ids[..., None].expand(-1, -1, d)) + 0.3 * torch.randn(
        r, s, d, generator=g
    )


def _assert_ids_match(x, cent, got, want):
    """Equal ids, except where both choices are within fp32 rounding of the same distance (the
    kernel's tl.dot sums in another order than torch.bmm): at most 1% of tokens."""
    bad = (got != want).nonzero().tolist()
    assert len(bad) <= 0.01 * got.numel()
    for r, s in bad:
        dist = cent[r].square().sum(-1) - 2 * cent[r] @ x[r, s]
        assert abs(dist[got[r, s]] - dist[want[r, s]]) <= 1e-5 * dist.abs().max()


@pytest.mark.parametrize(
    "r,s,d,c", [(2, 37, 64, 16), (1, 100, 128, 8), (1, 1, 64, 4), (1, 70, 256, 5)]
)
def test_assign_matches_reference(r, s, d, c):
    x = _x(r, s, d)
    cent = km.init_centroids(x, c, seed=1)
    got = kt.assign(x, cent)
    assert got.dtype == torch.int64 and got.shape == (r, s)
    _assert_ids_match(x, cent, got, km.assign(x, cent))


def test_assign_duplicates_tie_to_lowest_index():
    x = _x(1, 5, 64)
    cent = km.init_centroids(x, 16, seed=0)  # 5 tokens, 16 centroids: each token 3-4 times
    ids = kt.assign(x, cent)
    assert torch.equal(ids, torch.arange(5)[None])  # token j is centroid j (first copy)
    assert torch.equal(ids, km.assign(x, cent))


def test_first_duplicate_finds_lowest_equal_index():
    cent = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [1.0, 2.0], [-0.0, 0.0], [0.0, 0.0]]])
    assert kt.first_duplicate(cent).tolist() == [[0, 1, 0, 3, 3]]


def test_assign_reads_bf16_as_fp32():
    x = _x(2, 37, 64).to(torch.bfloat16)
    cent = km.init_centroids(x.float(), 16, seed=2)
    assert torch.equal(kt.assign(x, cent), kt.assign(x.float(), cent))


def test_update_matches_reference_and_keeps_empty_clusters():
    x = _x(2, 37, 64)
    prev = torch.randn(2, 12, 64)
    ids = torch.randint(0, 6, (2, 37), generator=torch.Generator().manual_seed(3))  # 6.. empty
    got, counts = kt.update(x, ids, prev)
    want, want_counts = km.update(x, ids, prev)
    assert torch.equal(counts, want_counts)
    torch.testing.assert_close(got, want, **tol("fp32"))
    assert torch.equal(got[:, 6:], prev[:, 6:])


def test_update_is_deterministic():
    x = _x(1, 100, 64)
    ids = torch.randint(0, 3, (1, 100), generator=torch.Generator().manual_seed(4))
    prev = torch.zeros(1, 3, 64)
    assert torch.equal(kt.update(x, ids, prev)[0], kt.update(x, ids, prev)[0])


@pytest.mark.parametrize("s,c", [(37, 8), (6, 16)])
def test_init_centroids_match_reference(s, c):
    x = _x(2, s, 64)
    assert torch.equal(kt.init_centroids(x, c, seed=5), km.init_centroids(x, c, seed=5))


def test_kmeans_matches_reference():
    x = _x(2, 60, 64)
    init = km.init_centroids(x, 8, seed=0)
    got, want = kt.kmeans(x, init, 3, 1e-3), km.kmeans(x, init, 3, 1e-3)
    assert got.iters == want.iters
    torch.testing.assert_close(got.centroids, want.centroids, **tol("fp32"))


@pytest.mark.gpu
def test_assign_full_size_gpu():
    x = _x(12, 37440, 128).cuda()
    cent = km.init_centroids(x, 256, seed=0)
    _assert_ids_match(x, cent, kt.assign(x, cent), km.assign(x, cent))
