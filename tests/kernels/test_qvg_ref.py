"""QVG reference codec: round-trip bounds, edge cases, warm start, exact sizes."""

from __future__ import annotations

import pytest
import torch

from kernels import codec, qvg_ref
from kernels import groupquant_ref as gq
from kernels.hadamard import rotate_groups
from kernels.spec import get_spec


def _x(b=1, h=2, s=1560, d=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    # a few semantic clusters + noise, as video tokens are
    centers = torch.randn(b * h, 6, d, generator=g) * 2
    ids = torch.randint(0, 6, (b * h, s), generator=g)
    x = torch.gather(centers, 1, ids[..., None].expand(-1, -1, d)) + 0.3 * torch.randn(
        b * h, s, d, generator=g
    )
    return x.reshape(b, h, s, d)


def _spec(name="qvg-int2", centroids=16, iters=3, warm_iters=None):
    return get_spec(name).with_kmeans(centroids=centroids, iters=iters, warm_iters=warm_iters)


def _centroid_sum(enc) -> torch.Tensor:
    b, h, s, d = enc.shape
    total = torch.zeros(b * h, s, d)
    for t in range(enc.spec.kmeans.stages):
        cent = enc.tensors[f"centroids.{t}"].reshape(b * h, -1, d).float()
        ids = enc.tensors[f"ids.{t}"].reshape(b * h, s).long()
        total += torch.gather(cent, 1, ids[..., None].expand(-1, -1, d))
    return total.reshape(b, h, s, d)


@pytest.mark.parametrize("name", ["qvg-int2", "qvg-int4", "qvg-pro-int2", "qvg-int2-plain"])
@pytest.mark.parametrize("d", [64, 128, 256])
def test_roundtrip_error_bound_per_element(name, d):
    """Per group, the rotation is orthonormal, so each element's error is at most the L2 norm of
    the per-element quantization bounds in the rotated domain: max(s/2, |y| - top level)."""
    x = _x(s=100, d=d)
    spec = _spec(name)
    enc = codec.encode(x, spec, backend="reference")
    xh = codec.decode(enc, out_dtype=torch.float32, backend="reference")
    qs = spec.quant
    r = x - _centroid_sum(enc)
    y = rotate_groups(r, qs.group_size) if qs.rotate else r
    s = gq.load_scale(enc.tensors["scales"], enc.tensors.get("scale_of_scales"))
    s = s.repeat_interleave(qs.group_size, -1)
    top = (qs.levels - 1) / 2 * s
    b = torch.maximum(s / 2, y.abs() - top) * (1 + 1e-5) + 1e-6
    g = qs.group_size
    bound = b.reshape(*b.shape[:-1], -1, g).square().sum(-1).sqrt().repeat_interleave(g, -1)
    err = (x - xh).abs()
    limit = bound if qs.rotate else b
    assert bool((err <= limit + 1e-5).all()), float((err - limit).max())


def test_works_on_1560_tokens_and_beats_plain_quantization():
    x = _x(s=1560)
    rel = {}
    for name in ("qvg-int2", "rtn-int2"):
        spec = _spec(name) if name.startswith("qvg") else name
        enc = codec.encode(x, spec, backend="reference")
        xh = codec.decode(enc, out_dtype=torch.float32)
        rel[name] = float((x - xh).square().sum() / x.square().sum())
    assert rel["qvg-int2"] < 0.1 * rel["rtn-int2"], rel


def test_more_stages_reduce_error():
    x = _x(s=300)
    errs = []
    for stages in (1, 2, 4):
        spec = _spec("qvg-int2").with_kmeans(stages=stages)
        xh = codec.decode(codec.encode(x, spec), out_dtype=torch.float32)
        errs.append(float((x - xh).square().sum()))
    assert errs[0] > errs[1] > errs[2]


@pytest.mark.parametrize("fill", [0.0, 3.25])
def test_constant_and_zero_spans(fill):
    x = torch.full((1, 2, 37, 64), fill)
    xh = codec.decode(codec.encode(x, _spec()), out_dtype=torch.float32)
    torch.testing.assert_close(xh, x, atol=abs(fill) * 2**-8 + 1e-6, rtol=0)


def test_fewer_tokens_than_centroids_and_one_token():
    for s in (1, 5):
        x = _x(s=s, d=64)
        enc = codec.encode(x, get_spec("qvg-int2"))  # C = 256 > s
        xh = codec.decode(enc, out_dtype=torch.float32)
        # every token is its own centroid: only centroid rounding (bf16) remains
        torch.testing.assert_close(xh, x, atol=0.05, rtol=2**-7)


def test_huge_values():
    x = _x(s=64, d=64) * 1e5
    xh = codec.decode(codec.encode(x, _spec()), out_dtype=torch.float32)
    assert torch.isfinite(xh).all()
    assert (x - xh).square().sum() / x.square().sum() < 0.05


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_input_is_refused(bad, dtype):
    x = _x(s=16, d=64).to(dtype)
    x[0, 1, 5, 7] = bad
    with pytest.raises(ValueError, match=r"non-finite.*\(0, 1, 5, 7\)"):
        codec.encode(x, "qvg-int2")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_input_is_refused_on_cuda_after_the_encode_is_queued(bad):
    """On CUDA the verdict is read after the Triton encode is queued: the same refusal."""
    x = _x(s=256).to("cuda", torch.bfloat16)
    x[0, 1, 5, 7] = bad
    with pytest.raises(ValueError, match=r"non-finite.*\(0, 1, 5, 7\)"):
        codec.encode(x, "qvg-int2")
    x[0, 1, 5, 7] = 0.0
    assert codec.encode(x, "qvg-int2").shape == tuple(x.shape)


def test_deterministic_codes_for_fixed_seed():
    x = _x(s=200)
    a, b = codec.encode(x, _spec()), codec.encode(x, _spec())
    for k in a.tensors:
        assert torch.equal(a.tensors[k].view(torch.uint8), b.tensors[k].view(torch.uint8)), k


def test_warm_start_uses_previous_centroids():
    x1, x2 = _x(s=200, seed=1), _x(s=200, seed=1)[:, :, torch.randperm(200)]
    first = codec.encode(x1, _spec())
    zero_iter = codec.encode(x2, _spec(iters=0), warm_start=first)
    assert torch.equal(zero_iter.tensors["centroids.0"], first.tensors["centroids.0"])
    cold = codec.encode(x2, _spec(iters=0))
    err = lambda e: float((x2 - codec.decode(e, out_dtype=torch.float32)).square().sum())  # noqa: E731
    assert err(zero_iter) < err(cold)


def test_warm_start_runs_warm_iters():
    """A warm-started span runs `warm_iters` Lloyd iterations (1 by default), a cold one `iters`."""
    from kernels import kmeans_ref

    calls = []
    real = kmeans_ref.kmeans

    def counting(x, init, iters, tol):
        calls.append(iters)
        return real(x, init, iters, tol)

    x1, x2 = _x(s=200, seed=1), _x(s=200, seed=2)
    spec = get_spec("qvg-int2").with_kmeans(centroids=16, iters=5)
    assert spec.kmeans.warm_iters == 1
    kmeans_ref.kmeans = counting
    try:
        first = codec.encode(x1, spec, backend="reference")
        codec.encode(x2, spec, warm_start=first, backend="reference")
        codec.encode(x2, spec.with_kmeans(warm_iters=None), warm_start=first, backend="reference")
    finally:
        kmeans_ref.kmeans = real
    assert calls == [5, 1, 5]


def test_warm_start_with_other_shape_is_ignored():
    first = codec.encode(_x(h=3, s=50), _spec())
    enc = codec.encode(_x(h=2, s=50), _spec(), warm_start=first)
    assert enc.tensors["centroids.0"].shape[1] == 2


@pytest.mark.parametrize("name", ["qvg-int2", "qvg-int4", "qvg-pro-int2"])
def test_predicted_bytes_equal_allocated(name):
    x = _x(s=1560 // 4, d=128)
    enc = codec.encode(x, name)
    assert enc.nbytes == codec.predict_nbytes(name, tuple(x.shape))
    assert enc.nbytes == sum(t.untyped_storage().nbytes() for t in enc.tensors.values())
    assert enc.compression_ratio == pytest.approx(2 * x.numel() / enc.nbytes)


def test_int2_ratio_at_anchor_shape():
    """[1, 12, 37440, 128] at qvg-int2: 6.97x, the official preset's ratio (no encoding needed)."""
    n = codec.predict_nbytes("qvg-int2", (1, 12, 37440, 128))
    assert 2 * 12 * 37440 * 128 / n == pytest.approx(6.97, abs=0.01)


def test_stage_names_and_dtypes():
    enc = codec.encode(_x(s=40, d=64), "qvg-pro-int2")
    assert enc.tensors["codes"].dtype == torch.uint8 and enc.tensors["codes"].shape[-1] == 16
    assert enc.tensors["scales"].dtype == torch.float8_e4m3fn
    for t in range(4):
        assert enc.tensors[f"centroids.{t}"].dtype == torch.bfloat16
        assert enc.tensors[f"ids.{t}"].dtype == torch.uint8
    assert qvg_ref.stage_names(2) == ("centroids.2", "ids.2")
