"""Attention for a batch of streams over the paged pool, one layer at a time.

Built once per step (`BatchRead`): every stream's page list as one `PagedBatch` (arena byte
offsets, formats, workspace rows, positions from the page -> frame map), the chunk's rows in
the workspace and its RoPE angles. Per layer:

    1. one fused read (kernels.paged_read_triton on CUDA, its torch reference elsewhere)
       decodes every history page of the batch, rotates keys, writes post-RoPE K/V:
    workspace [2, tokens, H, D]:  | s0 history | s0 chunk | s1 history | s1 chunk | ...
    2. one fused pass over the chunk (kernels.chunk_rope_triton on CUDA): RoPE on q and k
       (cos / sin computed once per step), k and v into their rows of the workspace;
    3. one attention call for the batch: torch SDPA with a batch dimension when every stream
       has the same lengths (flash on CUDA); else xformers' block-diagonal varlen kernel
       (BlockDiagonalMask.from_seqlens(q_seqlens, kv_seqlens)); on CPU, SDPA per stream.

The workspace holds one layer of the batch's KV, never the cache; the history is never
copied to fp32.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

from kernels.chunk_rope_triton import chunk_angles, chunk_qkv, chunk_qkv_ref
from kernels.paged_read_ref import AxialRope, PagedBatch, PageFormat, paged_read_ref
from qvg_serve.engine import kv_format as kf
from qvg_serve.engine.kv_pool import KVPool, ReadPlan

Rope = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""rope(x [tokens, H, D], positions int64 [tokens]) -> x rotated (same shape)."""


class StreamChunk(NamedTuple):
    """One stream's part of a batch for one layer."""

    q: torch.Tensor  # [Lq, H, D] queries of the chunk being denoised (before RoPE)
    k: torch.Tensor  # [Lq, H, D] the chunk's own keys (before RoPE)
    v: torch.Tensor  # [Lq, H, D]
    history: ReadPlan  # the stream's committed pages (from KVPool.read_plan)
    history_pos: torch.Tensor  # int64 [history.tokens] token positions of the history
    q_pos: torch.Tensor  # int64 [Lq] token positions of the chunk


def rope_1d(x: torch.Tensor, pos: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Plain rotary embedding over the last dim (pairs (2i, 2i+1)); for tests and tiny models."""
    d = x.shape[-1]
    inv = base ** (-torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d)
    ang = pos.to(torch.float32)[:, None] * inv[None]  # [tokens, D/2]
    cos, sin = ang.cos()[:, None], ang.sin()[:, None]
    xf = x.float().unflatten(-1, (d // 2, 2))
    a, b = xf[..., 0], xf[..., 1]
    return torch.stack((a * cos - b * sin, a * sin + b * cos), -1).flatten(-2).to(x.dtype)


def resolve_rope(rope, head_dim: int) -> AxialRope | None:
    """The AxialRope behind `rope`: an AxialRope, `rope_1d`, a model's bound `rope` method
    (its model has `axial_rope()`), or None (no rotation)."""
    if rope is None or isinstance(rope, AxialRope):
        return rope
    if rope is rope_1d:
        return AxialRope.one_d(head_dim)
    owner = getattr(rope, "__self__", None)
    if owner is not None and hasattr(owner, "axial_rope"):
        return owner.axial_rope()
    raise ValueError(
        f"rope {rope!r}: the fused paged read needs an AxialRope (pass model.axial_rope(), "
        "rope_1d or a model whose rope method has an axial_rope())"
    )


@functools.lru_cache(maxsize=1)
def xformers_ops():
    """xformers.ops when its CUDA attention loads, else None (CPU builds have none)."""
    try:
        import xformers.ops as xops

        if not torch.cuda.is_available():
            return None
        return xops
    except Exception:  # any import failure means: use SDPA
        return None


class Workspace:
    """Preallocated per-layer KV buffers of `max_tokens` tokens (reused by every layer).

    `read_ahead` (CUDA only; no effect elsewhere): a second buffer, and layer L + 1's history
    is read into it on a side stream while layer L attends (`BatchRead.attend`): the read,
    bound by memory bandwidth, runs beside attention and the layer's matmuls, bound by
    compute. Costs the second buffer's memory; the values are the same.
    """

    def __init__(self, max_tokens: int, heads: int, head_dim: int, device, dtype=torch.bfloat16,
                 read_ahead: bool = False) -> None:  # fmt: skip
        two = read_ahead and torch.device(device).type == "cuda"
        shape = (2 if two else 1, 2, max_tokens, heads, head_dim)
        self.buffers = torch.empty(shape, dtype=dtype, device=device)
        self.kv = self.buffers[0]
        self.side = torch.cuda.Stream(self.kv.device) if two else None

    @property
    def max_tokens(self) -> int:
        return self.kv.shape[1]

    @property
    def reads_ahead(self) -> bool:
        return self.side is not None


class ChunkRope:
    """RoPE at a step's fixed chunk positions (angles computed once per step) and the chunk's
    k, v written into rows of a buffer (the workspace, or a dense cache): `qkv`."""

    def __init__(self, rope: AxialRope | None, positions: torch.Tensor) -> None:
        self.rope, self.pos, self.cs = rope, positions.to(torch.int64), None
        if rope is not None:  # once per step: fp32 cos / sin [N, D/2] from float64 angles
            self.cs = chunk_angles(rope, self.pos)

    def qkv(self, q, k, v, k_out, v_out, rows) -> torch.Tensor:
        """The chunk's k (rotated) and v into rows `rows` of k_out / v_out [M, H, D]; returns
        q rotated. On CUDA one fused launch (kernels.chunk_rope_triton) for all three."""
        if self.cs is not None and q.is_cuda:
            return chunk_qkv(q, k, v, k_out, v_out, rows, *self.cs)
        if self.cs is not None:
            return chunk_qkv_ref(q, k, v, k_out, v_out, rows, *self.cs)
        k_out.index_copy_(0, rows, k.to(k_out.dtype))
        v_out.index_copy_(0, rows, v.to(v_out.dtype))
        return q


def _fields(fields) -> dict:
    """name -> (byte offset in the slice, dtype, shape) of back-to-back TensorFields."""
    out, pos = {}, 0
    for f in fields:
        out[f.name] = (pos, f.dtype, tuple(f.shape))
        pos += f.nbytes
    return out


def page_format(pool: KVPool, fmt: str) -> PageFormat:
    """Where `fmt`'s tensors sit in one (layer, kv) slice of a page / codebook of `pool`."""
    spec, kv = pool.specs[fmt], pool.kv
    page, book = kf.page_fields(spec, kv), kf.codebook_fields(spec, kv)
    if not book:
        return PageFormat(spec, kf.slice_bytes(page), _fields(page))
    return PageFormat(
        spec, kf.slice_bytes(page), _fields(page), kf.slice_bytes(book), _fields(book)
    )


def paged_batch(
    pool: KVPool, histories: Sequence[ReadPlan], history_pos: Sequence[torch.Tensor], bases
) -> tuple[PagedBatch, list[PageFormat]]:
    """The batch's pages as kernel input; kinds index the returned formats ([bf16, QVG...])."""
    used = {r.fmt for plan in histories for r in plan.runs}
    order = [kf.BF16] + [f for f in pool.specs if f in used and f != kf.BF16]
    kind = {f: i for i, f in enumerate(order)}
    t, rows, pos = pool.kv.page_tokens, [], []
    for plan, hpos, base in zip(histories, history_pos, bases, strict=True):
        for r in plan.runs:
            book = r.codebook.offset if r.codebook is not None else 0
            rows += [
                (o, book, kind[r.fmt], base + r.start + j * t) for j, o in enumerate(r.offsets)
            ]
        pos.append(hpos[::t].to(pool.device, torch.int64))  # a page holds one frame's tokens
    cols = torch.tensor(rows, dtype=torch.int64).reshape(-1, 4).T.contiguous().to(pool.device)
    pos_t = torch.cat(pos) if pos else torch.zeros(0, dtype=torch.int64, device=pool.device)
    return PagedBatch(cols[0], cols[1], cols[2], cols[3], pos_t), [
        page_format(pool, f) for f in order
    ]


class BatchRead:
    """One step's batch over the pool: build once, then `attend` layer by layer."""

    def __init__(self, pool: KVPool, ws: Workspace, rope, histories, history_pos, q_pos,
                 use_xformers: bool | None = None) -> None:  # fmt: skip
        self.pool, self.ws, self.use_xformers = pool, ws, use_xformers
        self.q_lens = [int(p.numel()) for p in q_pos]
        self.kv_lens = [h.tokens + n for h, n in zip(histories, self.q_lens, strict=True)]
        if sum(self.kv_lens) > ws.max_tokens:
            raise ValueError(
                f"batch needs {sum(self.kv_lens)} KV tokens; the workspace holds "
                f"{ws.max_tokens} (raise max_batch_kv_tokens or batch fewer streams)"
            )
        bases = [sum(self.kv_lens[:i]) for i in range(len(self.kv_lens))]
        self.batch, self.formats = paged_batch(pool, histories, history_pos, bases)
        self.rope = resolve_rope(rope, pool.kv.head_dim)
        dev = ws.kv.device
        self.chunk_rows = torch.cat(
            [
                torch.arange(b + h.tokens, b + n, device=dev)
                for b, h, n in zip(bases, histories, self.kv_lens, strict=True)
            ]  # fmt: skip
        )
        self.chunk_rope = ChunkRope(self.rope, torch.cat(list(q_pos)).to(dev))
        self.triton = pool.backend == "triton" or (pool.backend == "auto" and dev.type == "cuda")
        self.ahead = ws.reads_ahead and self.triton
        self._ready: dict[int, torch.cuda.Event] = {}  # layer -> its read ahead is done
        if self.ahead:  # the side stream reads these: their memory waits for it when freed
            for t in self.batch:
                t.record_stream(ws.side)

    def read(self, layer: int, out: torch.Tensor | None = None) -> None:
        """Every history page of the batch, layer `layer`, into `out` (default the
        workspace's first buffer), post-RoPE."""
        arena = self.pool.arena["gpu"]
        out = self.ws.kv if out is None else out
        if self.triton:
            from kernels.paged_read_triton import paged_read

            paged_read(arena, self.formats, self.batch, layer, out, self.rope)
        else:
            paged_read_ref(arena, self.formats, self.batch, layer, out, self.rope)

    def _history(self, layer: int) -> torch.Tensor:
        """The buffer that holds layer `layer`'s history once the compute stream gets there:
        read now, or read ahead (on the side stream, while the previous layer attended)."""
        if not self.ahead:
            self.read(layer)
            return self.ws.kv
        main, side = torch.cuda.current_stream(self.ws.kv.device), self.ws.side
        kv = self.ws.buffers[layer % 2]
        ready = self._ready.pop(layer, None)
        if ready is None:  # first layer, or out of order: nothing read ahead for it
            main.wait_stream(side)  # no read ahead of an earlier batch may still write
            self.read(layer, kv)
        else:
            main.wait_event(ready)
        if layer + 1 < self.pool.kv.layers:
            # the other buffer's last reader (layer - 1's attention) is queued on main
            side.wait_stream(main)
            with torch.cuda.stream(side):
                self.read(layer + 1, self.ws.buffers[(layer + 1) % 2])
                self._ready[layer + 1] = torch.cuda.Event()
                self._ready[layer + 1].record(side)
        return kv

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """q, k, v [sum Lq, H, D] (pre-RoPE, batch order) -> outputs [sum Lq, H, D]."""
        kv = self._history(layer)
        qr = self.chunk_rope.qkv(q, k, v, kv[0], kv[1], self.chunk_rows)
        return varlen_attention(qr, kv, self.q_lens, self.kv_lens, self.use_xformers)


def varlen_attention(q, kv, q_lens, kv_lens, use_xformers: bool | None = None) -> torch.Tensor:
    """Stream i's queries (rows of q, batch order) over its keys kv[:, its rows]: one call."""
    if len(set(q_lens)) == 1 and len(set(kv_lens)) == 1:
        b, lq, lk = len(q_lens), q_lens[0], kv_lens[0]
        qb = q.view(b, lq, *q.shape[1:]).transpose(1, 2)
        k, v = (kv[i, : b * lk].view(b, lk, *kv.shape[2:]).transpose(1, 2) for i in range(2))
        out = F.scaled_dot_product_attention(qb, k.to(q.dtype), v.to(q.dtype))
        return out.transpose(1, 2).reshape(q.shape)
    xops = xformers_ops() if use_xformers is not False else None
    if xops is not None and q.is_cuda:
        mask = xops.fmha.BlockDiagonalMask.from_seqlens(list(q_lens), list(kv_lens))
        n = sum(kv_lens)
        k, v = (kv[i, :n][None].to(q.dtype) for i in range(2))
        return xops.memory_efficient_attention(q[None], k, v, attn_bias=mask)[0]
    return _sdpa_blocks(q, kv, q_lens, kv_lens)


def batch_attention(
    pool: KVPool,
    layer: int,
    chunks: Sequence[StreamChunk],
    ws: Workspace,
    rope=rope_1d,
    use_xformers: bool | None = None,
) -> torch.Tensor:
    """Outputs [sum Lq, H, D] for every stream's chunk, in batch order (one layer)."""
    hist = [c.history for c in chunks]
    br = BatchRead(pool, ws, rope, hist, [c.history_pos for c in chunks],
                   [c.q_pos for c in chunks], use_xformers)  # fmt: skip
    q, k, v = (torch.cat([getattr(c, n) for c in chunks]) for n in "qkv")
    return br.attend(layer, q, k, v)


def _sdpa_blocks(q: torch.Tensor, kv: torch.Tensor, q_lens, kv_lens) -> torch.Tensor:
    outs, qs, ks = [], 0, 0
    for lq, lk in zip(q_lens, kv_lens, strict=True):
        qi = q[qs : qs + lq].transpose(0, 1)[None]  # [1, H, Lq, D]
        ki = kv[0, ks : ks + lk].transpose(0, 1)[None].to(q.dtype)
        vi = kv[1, ks : ks + lk].transpose(0, 1)[None].to(q.dtype)
        outs.append(F.scaled_dot_product_attention(qi, ki, vi)[0].transpose(0, 1))
        qs, ks = qs + lq, ks + lk
    return torch.cat(outs)
