"""A chunk's q, k and v for one layer in one pass: RoPE on q (into a new tensor), RoPE on k and
k, v into their rows of a KV buffer (the paged read's workspace, or a dense cache).

The chunk's positions are fixed for a whole step, so the angles are computed once per step
(`chunk_angles`, float64 as `AxialRope.rotate`) and every layer reads the same cos/sin
[N, D/2] (fp32, L2-resident): no per-element table gathers, no recomputation per head. One
launch per layer instead of three (RoPE q, RoPE k into rows, copy v into rows), each of which
re-read its inputs. Reads q, k, v once (any token and head strides, last dim contiguous) and
writes q', k', v' once.

Reference: `chunk_qkv_ref` (torch); tests compare the two through the Triton interpreter.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.paged_read_ref import AxialRope, rotate_pairs

CHUNK_LAUNCH = (8, 4, 4)
"""(tokens per program, heads per program (lowered to a divisor of H), warps): the best of
`tools/chunk_rope_sweep.py` on an H200, 2026-12-02 (31.2 us at 4,680 x 12 x 128)."""


def chunk_angles(rope: AxialRope, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) fp32 [N, D/2] at positions [N], from float64 angles (as `AxialRope.rotate`)."""
    ang = rope.angles(positions.to(torch.int64))
    return ang.cos().float().contiguous(), ang.sin().float().contiguous()


def chunk_qkv_ref(q, k, v, k_out, v_out, rows, cos, sin) -> torch.Tensor:
    """q, k, v [N, H, D]; k_out, v_out [M, H, D]; rows int64 [N]: k rotated into k_out[rows],
    v into v_out[rows]; returns q rotated (q's dtype)."""
    k_out.index_copy_(0, rows, rotate_pairs(k, cos, sin).to(k_out.dtype))
    v_out.index_copy_(0, rows, v.to(v_out.dtype))
    return rotate_pairs(q, cos, sin)


@triton.jit
def _rope_rows2(x, cs, sn, BS: tl.constexpr, HP: tl.constexpr):
    """x [BS, 2 HP] (channel pairs (2i, 2i + 1)) rotated by cos / sin [BS, HP], in fp32."""
    x0, x1 = tl.split(tl.reshape(x.to(tl.float32), (BS, HP, 2)))
    return tl.reshape(tl.join(x0 * cs - x1 * sn, x0 * sn + x1 * cs), (BS, 2 * HP))


@triton.jit
def _chunk_qkv_kernel(q, k, v, qo, ko, vo, rows_ptr, cos_ptr, sin_ptr, N,
                      sq_n, sq_h, sk_n, sk_h, sv_n, sv_h,
                      H: tl.constexpr, HALF: tl.constexpr, HP: tl.constexpr,
                      BS: tl.constexpr, HG: tl.constexpr):  # fmt: skip
    n = tl.program_id(0) * BS + tl.arange(0, BS)
    ok = n < N
    i = tl.arange(0, HP)
    c = tl.arange(0, 2 * HP)
    n64 = n.to(tl.int64)
    m2 = ok[:, None] & (i[None, :] < HALF)
    cs = tl.load(cos_ptr + n64[:, None] * HALF + i[None, :], mask=m2, other=0.0)
    sn = tl.load(sin_ptr + n64[:, None] * HALF + i[None, :], mask=m2, other=0.0)
    r = tl.load(rows_ptr + n, mask=ok, other=0).to(tl.int64)
    m = ok[:, None] & (c[None, :] < 2 * HALF)
    for j in tl.static_range(HG):
        h = tl.program_id(1) * HG + j
        dq = (n64 * H + h)[:, None] * (2 * HALF) + c[None, :]
        dkv = (r * H + h)[:, None] * (2 * HALF) + c[None, :]
        x = tl.load(q + (n64 * sq_n + h * sq_h)[:, None] + c[None, :], mask=m, other=0.0)
        tl.store(qo + dq, _rope_rows2(x, cs, sn, BS, HP).to(qo.dtype.element_ty), mask=m)
        x = tl.load(k + (n64 * sk_n + h * sk_h)[:, None] + c[None, :], mask=m, other=0.0)
        tl.store(ko + dkv, _rope_rows2(x, cs, sn, BS, HP).to(ko.dtype.element_ty), mask=m)
        x = tl.load(v + (n64 * sv_n + h * sv_h)[:, None] + c[None, :], mask=m, other=0.0)
        tl.store(vo + dkv, x.to(vo.dtype.element_ty), mask=m)


def _rows_of(x: torch.Tensor) -> torch.Tensor:
    """x [N, H, D] with a contiguous last dim (copied otherwise)."""
    return x if x.stride(-1) == 1 else x.contiguous()


def chunk_qkv(q, k, v, k_out, v_out, rows, cos, sin, launch=None) -> torch.Tensor:
    """`chunk_qkv_ref` in one Triton launch (CUDA, or the interpreter on CPU)."""
    n, h, d = q.shape
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"chunk_qkv: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    for name, out in (("k_out", k_out), ("v_out", v_out)):
        if out.shape[1:] != (h, d) or not out.is_contiguous():
            raise ValueError(f"chunk_qkv: {name} must be a contiguous [M, {h}, {d}] tensor")
    if d % 2 or cos.shape != (n, d // 2) or sin.shape != cos.shape or rows.shape != (n,):
        raise ValueError(
            f"chunk_qkv: cos/sin need [{n}, {d // 2}] and rows [{n}] (got {tuple(cos.shape)}, "
            f"{tuple(rows.shape)})"
        )
    qo = torch.empty((n, h, d), dtype=q.dtype, device=q.device)
    if n == 0:
        return qo
    q, k, v = _rows_of(q), _rows_of(k), _rows_of(v)
    bs, hg, warps = launch or CHUNK_LAUNCH
    hg = max(g for g in range(1, min(hg, h) + 1) if h % g == 0)  # heads per program divide H
    grid = (triton.cdiv(n, bs), triton.cdiv(h, hg))
    _chunk_qkv_kernel[grid](
        q, k, v, qo, k_out, v_out, rows, cos.contiguous(), sin.contiguous(), n,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        H=h, HALF=d // 2, HP=triton.next_power_of_2(d // 2), BS=bs, HG=hg, num_warps=warps,
    )  # fmt: skip
    return qo
