"""The scale-search probe's CPU parts (tools/quant_probe.py) and the old kernel it times
(tools/quant_variants.py): the old kernel still equals its own reference, the quality table's
variants decode through the real codec and rank as the probe reports them."""

from __future__ import annotations

import torch

from kernels import groupquant_ref as gq
from kernels import quant_triton as qt
from kernels.spec import QuantSpec, get_spec
from tools import quant_probe, quant_variants


def _stage(r=2, s=40, d=64, c=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(r, s, d, generator=g) * 2
    cent = (torch.randn(1, r, c, d, generator=g) * 2).to(torch.bfloat16)
    ids = torch.randint(0, c, (1, r, s), generator=g).to(torch.uint8)
    return x, cent, ids


def test_old_kernel_equals_old_reference_unrotated():
    spec = QuantSpec(rotate=False, search_grid=4)
    x, cent, ids = _stage()
    y = quant_probe.residual(x, cent[0], ids[0], spec)
    qp = quant_variants.old_choose_qparams(y, spec)
    got = quant_variants.quantize_old(x, cent, ids, spec)
    assert torch.equal(got.scales.float(), qp.scales.float())
    assert torch.equal(got.codes, gq.pack(gq.quantize(y, qp, spec), spec.bits))
    new = qt.quantize(x, cent, ids, spec)  # fixed-point ranking: same picks on this data
    assert (new.scales.float() != got.scales.float()).float().mean() <= 0.01


def test_quality_variants_run_the_codec_and_the_search_beats_absmax():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 2, 200, 64, generator=g) * torch.linspace(0.2, 3.0, 64)
    spec = get_spec("qvg-int2").with_kmeans(centroids=8, iters=1)
    err = quant_probe.rel_mse_by_variant(x, spec, "k")
    assert set(err) == set(quant_probe.quality_variants(spec.quant))
    old, new = err["old (fp32 sq. error)"], err["new full (16)"]
    assert abs(new - old) <= 0.01 * old
    assert err["coarse step 4"] >= new * (1 - 1e-4)  # a subset of the candidates
    assert err["absmax (no search)"] > 1.2 * new
