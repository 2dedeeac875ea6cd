"""QVG on Triton kernels vs the reference: same tensors (names, dtypes, shapes, codes), and each
side decodes what the other encoded."""

from __future__ import annotations

import pytest
import torch
from conftest import tol

from kernels import codec, qvg_ref, qvg_triton
from kernels.spec import get_spec


def _x(b=1, h=2, s=37, d=64, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(b * h, 5, d, generator=g) * 2
    ids = torch.randint(0, 5, (b * h, s), generator=g)
    x = torch.gather(centers, 1, ids[..., None].expand(-1, -1, d))
    return (x + 0.3 * torch.randn(b * h, s, d, generator=g)).reshape(b, h, s, d).to(dtype)


def _spec(name, centroids=8, iters=2):
    return get_spec(name).with_kmeans(centroids=centroids, iters=iters)


def _rel_mse(x, y):
    return float((x.float() - y.float()).square().sum() / x.float().square().sum())


def _assert_same_encoding(got, want):
    """Same names, dtypes, shapes; ids and centroids bit-exact (identical k-means math on this
    data); codes equal on >= 99.5% of bytes (rotation rounding, see test_quant_triton)."""
    assert list(got.tensors) == list(want.tensors)
    for k, w in want.tensors.items():
        g = got.tensors[k]
        assert (g.dtype, g.shape) == (w.dtype, w.shape), k
        if k.startswith(("ids.", "centroids.")):
            assert torch.equal(g.float(), w.float()), k
    assert (got.tensors["codes"] != want.tensors["codes"]).float().mean() <= 0.005
    assert got.nbytes == want.nbytes


@pytest.mark.parametrize("name", ["qvg-int2", "qvg-int4", "qvg-pro-int2", "qvg-int2-plain"])
def test_encode_matches_reference(name):
    x = _x(dtype=torch.bfloat16)
    spec = _spec(name, iters=1 if name == "qvg-pro-int2" else 2)
    got, want = qvg_triton.encode(x, spec), qvg_ref.encode(x, spec)
    _assert_same_encoding(got, want)
    if not spec.quant.rotate:
        assert torch.equal(got.tensors["codes"], want.tensors["codes"])
    # cross decoding: each side reads the other's bytes
    torch.testing.assert_close(
        qvg_triton.decode(want, torch.float32), qvg_ref.decode(want, torch.float32), **tol("fp32")
    )
    assert _rel_mse(x, qvg_ref.decode(got)) <= 1.01 * _rel_mse(x, qvg_ref.decode(want)) + 1e-6


@pytest.mark.parametrize(
    "case,s,d",
    [
        ("centroids>tokens", 5, 64),
        ("one-token", 1, 64),
        ("s100-d128", 100, 128),
        ("zeros", 37, 64),
        ("constant", 37, 64),
    ],
)
def test_encode_edge_cases(case, s, d):
    x = _x(s=s, d=d)
    if case == "zeros":
        x = torch.zeros_like(x)
    if case == "constant":
        x = torch.full_like(x, 0.7)
    spec = _spec("qvg-int2", centroids=16)
    got, want = qvg_triton.encode(x, spec), qvg_ref.encode(x, spec)
    _assert_same_encoding(got, want)
    y = qvg_triton.decode(got, torch.float32)
    torch.testing.assert_close(y, qvg_ref.decode(got, torch.float32), **tol("fp32"))
    if case in ("zeros", "constant", "one-token", "centroids>tokens"):  # every token a centroid
        torch.testing.assert_close(y, x.to(torch.bfloat16).float(), **tol("bf16"))


def test_warm_start_matches_reference():
    spec = _spec("qvg-int2")
    prev = qvg_ref.encode(_x(seed=1), spec)
    x = _x(seed=2)
    _assert_same_encoding(qvg_triton.encode(x, spec, warm=prev), qvg_ref.encode(x, spec, warm=prev))


def test_codec_triton_backend_and_out_view():
    x = _x(h=3, s=37)
    enc = codec.encode(x, _spec("qvg-int2"), backend="triton")
    y = codec.decode(enc, backend="triton")
    torch.testing.assert_close(y.float(), qvg_ref.decode(enc, torch.float32), **tol("bf16"))
    ws = torch.zeros(1, 3, 64, 64, dtype=torch.bfloat16)
    qvg_triton.decode(enc, out=ws[:, :, 10:47])
    assert torch.equal(ws[:, :, 10:47], y) and not ws[:, :, :10].any()


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["qvg-int2", "qvg-pro-int2"])
def test_full_size_gpu(name):
    x = _x(1, 12, 37440, 128, dtype=torch.bfloat16).cuda()
    spec = get_spec(name)
    got, want = qvg_triton.encode(x, spec), qvg_ref.encode(x, spec)
    for k, w in want.tensors.items():
        assert (got.tensors[k].dtype, got.tensors[k].shape) == (w.dtype, w.shape)
    # k-means is chaotic: one ulp in a centroid can move tokens, so compare quality, not bytes
    mine, ref = _rel_mse(x, qvg_triton.decode(got)), _rel_mse(x, qvg_ref.decode(want))
    assert mine <= 1.05 * ref
    torch.testing.assert_close(
        qvg_triton.decode(want, torch.float32), qvg_ref.decode(want, torch.float32), **tol("fp32")
    )
