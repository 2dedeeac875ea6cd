"""kernels.page_layout lists exactly the tensors encode stores: names, shapes, dtypes, bytes."""

from __future__ import annotations

import pytest
import torch

from kernels import codec
from kernels.page_layout import codec_layout, stage_names
from kernels.spec import PRESETS, get_spec

ALL = sorted(PRESETS)
QVG = [n for n in ALL if n.startswith("qvg")]


def _spec(name):
    spec = get_spec(name)  # fewer iterations only: the layout does not depend on them
    return spec.with_kmeans(iters=1) if spec.kmeans is not None else spec


def _x(s, h=2, d=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, h, s, d, generator=g).to(torch.bfloat16)


def _assert_layout_is_encoded(enc, lay):
    got = {n: (t.dtype, tuple(t.shape)) for n, t in enc.tensors.items()}
    want = {f.name: (f.dtype, (1, *f.shape)) for f in lay.fields}
    assert got == want
    assert lay.nbytes == enc.nbytes == sum(t.nbytes for t in enc.tensors.values())


@pytest.mark.parametrize("tokens", [1, 1560, 37])
@pytest.mark.parametrize("role", ["k", "v"])
@pytest.mark.parametrize("name", ALL)
def test_layout_equals_reference_encoder_output(name, role, tokens):
    spec = _spec(name)
    enc = codec.encode(_x(tokens), spec, role=role, backend="reference")
    _assert_layout_is_encoded(enc, codec_layout(spec, 2, tokens, 64, role))


@pytest.mark.parametrize("tokens", [1, 37])  # 1,560 runs minutes in the interpreter
@pytest.mark.parametrize("name", QVG)
def test_layout_equals_triton_encoder_output(name, tokens):
    spec = _spec(name).with_kmeans(iters=1, centroids=16)
    enc = codec.encode(_x(tokens), spec, role="k", backend="triton")
    _assert_layout_is_encoded(enc, codec_layout(spec, 2, tokens, 64))


@pytest.mark.parametrize("name", ALL)
def test_per_token_fields_have_tokens_at_dim_1(name):
    a, b = codec_layout(name, 3, 10, 128, "v"), codec_layout(name, 3, 20, 128, "v")
    for fa, fb in zip(a.fields, b.fields, strict=True):
        assert fa.per_token == fb.per_token and fa.name == fb.name
        if fa.per_token:
            assert fa.shape[1] == 10 and fb.shape[1] == 20 and fb.nbytes == 2 * fa.nbytes
        else:
            assert fa.shape == fb.shape
    assert b.token_nbytes == 2 * a.token_nbytes and a.span_nbytes == b.span_nbytes


def test_kivi_keys_are_per_span_padded_to_the_token_group():
    lay = codec_layout("kivi-int2", 2, 33, 64, "k")  # 33 tokens -> 64 (group 32)
    assert lay.token_fields == ()
    assert {f.name: f.shape for f in lay.fields} == {
        "codes": (2, 64, 16),
        "scales": (2, 64, 2),
        "zeros": (2, 64, 2),
    }


def test_docstring_example_bytes():
    lay = codec_layout("qvg-int2", heads=12, tokens=1560, head_dim=128)
    assert [f.name for f in lay.fields] == [
        "codes",
        "scales",
        "ids.0",
        "centroids.0",
        "scale_of_scales",
    ]
    assert (lay.token_nbytes, lay.span_nbytes) == (655_200, 786_480)
    assert [f.name for f in codec_layout("qvg-pro-int2", 1, 1, 64).token_fields] == [
        "codes",
        "scales",
        *(stage_names(t)[1] for t in range(4)),
    ]


def test_predict_nbytes_scales_with_batch():
    one = codec_layout("qvg-int4", 4, 1560, 128).nbytes
    assert codec.predict_nbytes("qvg-int4", (3, 4, 1560, 128)) == 3 * one


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(heads=0), "heads"),
        (dict(tokens=0), "tokens"),
        (dict(head_dim=48), "multiple"),
        (dict(role="q"), "role"),
    ],
)
def test_layout_rejects_bad_shapes(kw, match):
    args = dict(spec="qvg-int2", heads=2, tokens=8, head_dim=64) | kw
    with pytest.raises(ValueError, match=match):
        codec_layout(**args)
