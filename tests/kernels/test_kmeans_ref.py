"""k-means reference: determinism, empty clusters, fewer tokens than centroids."""

from __future__ import annotations

import torch

from kernels import kmeans_ref as km


def _blobs(r=2, s=300, d=16, k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(r, k, d, generator=g) * 10
    ids = torch.randint(0, k, (r, s), generator=g)
    x = torch.gather(centers, 1, ids[..., None].expand(-1, -1, d)) + 0.01 * torch.randn(
        r, s, d, generator=g
    )
    return x, centers


def test_deterministic_for_fixed_seed():
    x, _ = _blobs()
    a = km.kmeans(x, km.init_centroids(x, 8, seed=3), 5, 0.0).centroids
    b = km.kmeans(x, km.init_centroids(x, 8, seed=3), 5, 0.0).centroids
    assert torch.equal(a, b)
    c = km.init_centroids(x, 8, seed=4)
    assert not torch.equal(km.init_centroids(x, 8, seed=3), c)


def test_recovers_separated_blobs():
    x, _ = _blobs(k=4)
    cent = km.kmeans(x, km.init_centroids(x, 16, seed=0), 10, 0.0).centroids
    ids = km.assign(x, cent)
    err = (x - torch.gather(cent, 1, ids[..., None].expand(-1, -1, x.shape[2]))).square().mean()
    assert err < 1e-3


def test_init_picks_distinct_tokens():
    x = torch.arange(40, dtype=torch.float32).reshape(1, 40, 1)
    init = km.init_centroids(x, 10, seed=0)
    assert init.unique().numel() == 10


def test_fewer_tokens_than_centroids():
    x = torch.randn(1, 3, 8, generator=torch.Generator().manual_seed(1))
    cent = km.kmeans(x, km.init_centroids(x, 16, seed=0), 3, 0.0).centroids
    assert cent.shape == (1, 16, 8) and torch.isfinite(cent).all()
    ids = km.assign(x, cent)
    recon = torch.gather(cent, 1, ids[..., None].expand(-1, -1, 8))
    torch.testing.assert_close(recon, x)


def test_empty_cluster_keeps_previous_centroid():
    x = torch.zeros(1, 4, 2)
    prev = torch.tensor([[[0.0, 0.0], [100.0, 100.0]]])
    ids = km.assign(x, prev)
    new, counts = km.update(x, ids, prev)
    assert counts.tolist() == [[4.0, 0.0]]
    assert new[0, 1].tolist() == [100.0, 100.0]


def test_assign_ties_go_to_lowest_index():
    x = torch.zeros(1, 1, 2)
    cent = torch.tensor([[[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]]])
    assert km.assign(x, cent).tolist() == [[0]]


def test_assign_chunking_matches_unchunked(monkeypatch):
    x, _ = _blobs(s=100)
    cent = km.init_centroids(x, 7, 0)
    full = km.assign(x, cent)
    monkeypatch.setattr(km, "ASSIGN_CHUNK", 13)
    assert torch.equal(km.assign(x, cent), full)
