"""The orthonormal Hadamard rotation of [rows, G] fp32 tiles on bf16 tensor cores, exactly.

fp32 has 24 significant bits and bf16 8, so y = hi + mid + lo with three bf16 parts loses
nothing; the +-1 Sylvester matrix is exact in bf16 and bf16 products are exact in fp32, so
three dots accumulated in fp32 round only where an fp32 FMA dot would (in another order).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .kmeans_update_triton import dot16, split3


@triton.jit
def split_dot(y, h, G: tl.constexpr, TC: tl.constexpr):
    """y @ h for the orthonormal Hadamard h on bf16 tensor cores, exact products: y = hi + mid
    + lo, each a bf16 (8 + 8 + 8 significant bits cover fp32's 24), times the +-1 Sylvester
    matrix (exact in bf16), accumulated in fp32 smallest part first, then scaled by 1/sqrt(G).
    Only the fp32 accumulation rounds, as in the ieee dot (in another order).
    TC off: the same parts in fp32 ieee dots (the interpreter has no bf16 dot; tests the split)."""
    pm = tl.where(h > 0, 1.0, -1.0).to(tl.bfloat16)
    hi, mid, lo = split3(y)
    if TC:  # (the PTX timed on the H200, 2026-12-02)
        acc = tl.dot(lo, pm)
        acc = tl.dot(mid, pm, acc)
        acc = tl.dot(hi, pm, acc)
    else:
        acc = dot16(lo, pm, tl.zeros(y.shape, tl.float32), False)
        acc = dot16(mid, pm, acc, False)
        acc = dot16(hi, pm, acc, False)
    return acc * tl.max(tl.max(h, axis=1), axis=0)  # h's positive entry: fp32(1/sqrt(G))
