"""The k-means alternatives kept for sweeps (tools/kmeans_variants.py): the sort-based update
still equals the reference, and the torch first_duplicate the Triton one."""

from __future__ import annotations

import importlib.util
import pathlib

import torch

from kernels import kmeans_ref as km
from kernels import kmeans_triton as kt
from tools import kmeans_variants as kv

# tests/conftest.py's tolerance table, by path (see tests/tools/test_decode_variants.py).
_spec = importlib.util.spec_from_file_location(
    "root_conftest", pathlib.Path(__file__).parents[1] / "conftest.py"
)
_root = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_root)
tol = _root.tol


def test_update_sort_matches_reference_and_onehot():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 37, 64, generator=g)
    prev = torch.randn(2, 12, 64, generator=g)
    ids = torch.randint(0, 6, (2, 37), generator=g)  # 6.. empty
    got, counts = kv.update_sort(x, ids, prev)
    want, want_counts = km.update(x, ids, prev)
    assert torch.equal(counts, want_counts)
    torch.testing.assert_close(got, want, **tol("fp32"))
    assert torch.equal(got[:, 6:], prev[:, 6:])
    torch.testing.assert_close(got, kt.update(x, ids, prev)[0], **tol("fp32"))


def test_first_duplicate_torch_equals_triton():
    g = torch.Generator().manual_seed(0)
    pool = torch.randn(3, 4, 16, generator=g)
    pool[:, 0] = -0.0
    cent = torch.gather(pool, 1, torch.randint(0, 4, (3, 50, 1), generator=g).expand(-1, -1, 16))
    cent[:, 7] = 0.0  # +0.0 row equals the -0.0 ones
    assert torch.equal(kv.first_duplicate_torch(cent), kt.first_duplicate(cent))
