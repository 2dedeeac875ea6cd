"""Codec specs: presets resolve, invalid specs name the field."""

from __future__ import annotations

import pytest

from kernels.spec import PRESETS, CodecSpec, KMeansSpec, Method, QuantSpec, get_spec


def test_required_presets_exist():
    for name in (
        "qvg-int2",
        "qvg-int4",
        "qvg-pro-int2",
        "bf16",
        "fp8",
        "rtn-int2",
        "rtn-int4",
        "kivi-int2",
        "kivi-int4",
        "quarot-int2",
        "quarot-int4",
    ):
        assert get_spec(name).name == name


def test_qvg_presets_match_the_issue():
    s = get_spec("qvg-int2")
    assert (s.quant.bits, s.quant.group_size, s.kmeans.stages, s.kmeans.centroids) == (
        2,
        64,
        1,
        256,
    )
    p = get_spec("qvg-pro-int2")
    assert (p.quant.bits, p.quant.group_size, p.kmeans.stages) == (2, 16, 4)
    assert get_spec("qvg-int4").quant.bits == 4


def test_unknown_preset_lists_choices():
    with pytest.raises(ValueError, match="qvg-int2"):
        get_spec("qvg-int3")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"bits": 3}, "bits"),
        ({"group_size": 48}, "group_size"),
        ({"search_grid": 0}, "search_grid"),
        ({"search_min": 0.0}, "search_min"),
        ({"symmetric": False, "scale_search": True}, "scale_search"),
    ],
)
def test_invalid_quant_spec_names_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        QuantSpec(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"stages": 0}, "stages"),
        ({"centroids": 0}, "centroids"),
        ({"iters": -1}, "iters"),
        ({"tol": 1.0}, "tol"),
    ],
)
def test_invalid_kmeans_spec_names_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        KMeansSpec(**kwargs)


def test_codec_spec_consistency():
    with pytest.raises(ValueError, match="quant"):
        CodecSpec("x", Method.RTN)
    with pytest.raises(ValueError, match="kmeans"):
        CodecSpec("x", Method.QVG, QuantSpec())
    with pytest.raises(ValueError, match="quant"):
        CodecSpec("x", Method.BF16, QuantSpec())


def test_with_helpers_copy():
    s = PRESETS["qvg-int2"].with_kmeans(iters=2).with_quant(rotate=False)
    assert s.kmeans.iters == 2 and not s.quant.rotate
    assert PRESETS["qvg-int2"].kmeans.iters != 2 or PRESETS["qvg-int2"].quant.rotate
