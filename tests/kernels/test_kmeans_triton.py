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


def _first_duplicate_brute(cent):
    """The definition: lowest j with cent[j] == cent[c] elementwise (float ==)."""
    eq = (cent.float()[:, :, None, :] == cent.float()[:, None, :, :]).all(-1)
    return eq.int().argmax(-1)


def test_first_duplicate_finds_lowest_equal_index():
    cent = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [1.0, 2.0], [-0.0, 0.0], [0.0, 0.0]]])
    assert kt.first_duplicate(cent).tolist() == [[0, 1, 0, 3, 3]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("c,d", [(70, 40), (33, 128), (5, 3)])
def test_first_duplicate_matches_definition(dtype, c, d):
    """Many duplicates spread over several blocks (block 32), signed zeros, a NaN row."""
    g = torch.Generator().manual_seed(c)
    pool = torch.randn(2, 6, d, generator=g)
    pool[:, 0] = 0.0
    pool[:, 1, : d // 2 + 1] = -0.0  # equals the zero vector
    pool[1, 2, 0] = float("nan")  # never equal to anything, itself included
    pick = torch.randint(0, 6, (2, c), generator=g)
    cent = torch.gather(pool, 1, pick[..., None].expand(-1, -1, d)).to(dtype)
    got = kt.first_duplicate(cent)
    assert got.dtype == torch.int64
    want = _first_duplicate_brute(cent)
    nan = cent.float().isnan().any(-1)
    want = torch.where(nan, torch.arange(c).expand(2, c), want)
    assert torch.equal(got, want)


def test_first_duplicate_verifies_key_collisions():
    """Bits (b0 + 2, b1 - 1) hash like (b0, b1) (weights w, 2w): the vectors must be compared."""
    a = torch.tensor([1.0, 3.0]).view(torch.int32)
    b = (a + torch.tensor([2, -1], dtype=torch.int32)).view(torch.float32)
    cent = torch.stack([a.view(torch.float32), b, b])[None]
    assert kt.first_duplicate(cent).tolist() == [[0, 1, 1]]


def test_assign_reads_bf16_as_fp32():
    x = _x(2, 37, 64).to(torch.bfloat16)
    cent = km.init_centroids(x.float(), 16, seed=2)
    assert torch.equal(kt.assign(x, cent), kt.assign(x.float(), cent))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("r,s,d,c", [(2, 37, 64, 16), (1, 150, 128, 300), (1, 5, 24, 16)])
def test_assign_native_16bit_matches_reference(dtype, r, s, d, c):
    """One 16-bit dtype on both sides (the final assignment): exact products, fp32 sums."""
    x = _x(r, s, d).to(dtype)
    cent = km.init_centroids(x.float(), c, seed=1).to(dtype)  # c > s: duplicates
    got = kt.assign(x, cent, block_s=32)
    assert kt.default_precision(x, cent) == "native"
    _assert_ids_match(x.float(), cent.float(), got, km.assign(x.float(), cent.float()))


def test_assign_bf16x3_matches_reference():
    x = _x(2, 60, 64).to(torch.bfloat16)
    cent = km.init_centroids(x.float(), 24, seed=3) + 1e-3  # fp32 values off the bf16 grid
    got = kt.assign(x, cent, "bf16x3", block_s=32, block_c=16)
    _assert_ids_match(x.float(), cent, got, km.assign(x.float(), cent))


def test_assign_rejects_mismatched_precision():
    x = _x(1, 8, 64)
    with pytest.raises(ValueError, match="native"):
        kt.assign(x, x[:, :4], "native")
    with pytest.raises(ValueError, match="bf16x3"):
        kt.assign(x, x[:, :4], "bf16x3")
    with pytest.raises(ValueError, match="precision"):
        kt.assign(x.bfloat16(), x[:, :4], "fp64")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("parts", [None, 3])
def test_update_matches_reference_and_keeps_empty_clusters(dtype, parts):
    x = _x(2, 37, 64).to(dtype)
    prev = torch.randn(2, 40, 64)
    ids = torch.randint(0, 30, (2, 37), generator=torch.Generator().manual_seed(3))  # 30.. empty
    got, counts = kt.update(x, ids, prev, block_c=16, block_s=16, parts=parts)
    want, want_counts = km.update(x.float(), ids, prev)
    assert torch.equal(counts, want_counts)
    torch.testing.assert_close(got, want, **tol("fp32"))
    empty = want_counts == 0
    assert torch.equal(got[empty], prev[empty])


def test_update_single_token_clusters_are_exact():
    """fp32 x goes through three bf16 parts: their sum must give every token back bit-exactly."""
    x = _x(1, 20, 48) * torch.logspace(-3, 3, 48)
    got, counts = kt.update(x, torch.arange(20)[None], torch.zeros(1, 20, 48), block_c=16)
    assert torch.equal(got, x) and torch.equal(counts, torch.ones(1, 20))


def test_update_is_deterministic():
    x = _x(1, 100, 64)
    ids = torch.randint(0, 3, (1, 100), generator=torch.Generator().manual_seed(4))
    prev = torch.zeros(1, 3, 64)
    a = kt.update(x, ids, prev, block_s=16, parts=4)[0]
    assert torch.equal(a, kt.update(x, ids, prev, block_s=16, parts=4)[0])


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


@pytest.mark.gpu
def test_assign_native_full_size_gpu():
    x = _x(12, 37440, 128).cuda().to(torch.bfloat16)
    cent = km.init_centroids(x.float(), 256, seed=0).to(torch.bfloat16)
    got = kt.assign(x, cent)
    _assert_ids_match(x.float(), cent.float(), got, km.assign(x.float(), cent.float()))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_update_full_size_gpu(dtype):
    x = _x(12, 37440, 128).cuda().to(dtype)
    prev = km.init_centroids(x.float(), 256, seed=0)
    ids = kt.assign(x, prev)
    got, counts = kt.update(x, ids, prev)
    want, want_counts = km.update(x.float(), ids, prev)
    assert torch.equal(counts, want_counts)
    torch.testing.assert_close(got, want, **tol("fp32"))
    assert torch.equal(got, kt.update(x, ids, prev)[0])  # run to run: same bits
