"""The tensors behind the scheduler's page ids: one preallocated arena per tier, and the
operations the scheduler orders (write committed pages, execute encode / move plans, read a
stream's pages for one layer).

`scheduler.pages.PageAllocator` decides which bytes mean what; this class only moves bytes.
Every tier is one flat uint8 tensor of `blocks * block_bytes`, allocated once. A read
(`read_layer`) allocates one gathered copy of each run's page bytes per layer (quantized runs
also regroup their per-token tensors in token order) and then copies bf16 pages / decodes
quantized ones straight into the caller's `out` (the attention workspace); without `out` it
allocates its result too. Encodes allocate their codec's outputs (off the per-step path).

    arena[tier]: | block 0 (typed bf16)     | block 1 (typed qvg-int2) ...         |
                 | page | page | slack      | p | p | p | p | p | p | p | slack     |
    one page:    [layer 0: K slice, V slice][layer 1: K, V] ...   (kv_format layouts)

Reading is per layer (attention runs layer by layer): `ReadPlan` resolves a page table once
per step into runs of pages that share (format, span), with device index tensors, so each of
the model's layers costs one gather per run, plus a decode for quantized runs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import NamedTuple

import torch

from kernels import codec
from kernels.container import Encoded
from kernels.spec import CodecSpec, get_spec
from qvg_serve.engine import kv_format as kf
from scheduler.layout import ALIGN_BYTES
from scheduler.pages import PageAllocator, PageError, PageLoc, Plan, PoolLayout

log = logging.getLogger(__name__)


class Run(NamedTuple):
    """Consecutive table entries with one (format, span): read together."""

    fmt: str
    codebook: PageLoc | None
    blocks: torch.Tensor  # int64 [n] on the arena's device
    slots: torch.Tensor  # int64 [n]
    start: int  # first token of this run in the stream's gathered history
    tokens: int
    offsets: tuple[int, ...] = ()  # arena byte offset of each page item (the fused read's input)


class ReadPlan(NamedTuple):
    """A stream's page table resolved to runs; valid until the pool changes (next step)."""

    runs: tuple[Run, ...]
    tokens: int


def pool_layout(
    kv: kf.KVShape,
    formats: Sequence[str],
    gpu_bytes: int,
    cpu_bytes: int = 0,
    specs: dict[str, CodecSpec] | None = None,
) -> PoolLayout:
    """The scheduler's layout for `formats` at exact item sizes, sized from byte budgets.

    Block size: the largest item (a bf16 page) rounded up to a whole number of pages of the
    last listed quantized format (the one the pool converges to under pressure), so those
    pages fill their blocks: at Self-Forcing shapes a 287.5 MB block would hold 7 INT2 pages
    (4% slack), a 314.5 MB block holds 8 (0%).
    """
    resolved = resolve_specs(formats, specs)
    page = {f: kf.page_bytes(s, kv) for f, s in resolved.items()}
    books = {f: b for f, s in resolved.items() if (b := kf.codebook_bytes(s, kv))}
    block = max([*page.values(), *books.values()])
    quantized = [f for f in formats if f != kf.BF16]
    if quantized:
        unit = page[quantized[-1]]
        block = -(-block // unit) * unit
    block = -(-block // ALIGN_BYTES) * ALIGN_BYTES
    if gpu_bytes < block:
        raise ValueError(f"KV budget {gpu_bytes} B holds no block of {block} B; raise it")
    return PoolLayout(block, gpu_bytes // block, max(cpu_bytes, 0) // block, page, books)


def resolve_specs(formats: Sequence[str], specs: dict[str, CodecSpec] | None) -> dict:
    """Format name -> codec spec (a preset unless `specs` overrides it, e.g. fewer centroids)."""
    return {f: (specs or {}).get(f) or get_spec(f) for f in formats}


class KVPool:
    """Arena tensors + executors of the allocator's plans."""

    def __init__(
        self,
        kv: kf.KVShape,
        allocator: PageAllocator,
        device: torch.device | str,
        specs: dict[str, CodecSpec] | None = None,
        backend: str = "auto",
        encode_batch_bytes: int = 512 << 20,
    ) -> None:
        """`encode_batch_bytes`: bf16 K/V bytes of the layers one codec call encodes together
        (an encode batches layers to cut kernel launches; its transient memory is ~2x this)."""
        self.kv, self.alloc, self.backend = kv, allocator, backend
        self.encode_batch_bytes = encode_batch_bytes
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:  # "cuda" != "cuda:0"
            self.device = torch.device("cuda", torch.cuda.current_device())
        layout = allocator.layout
        self.specs = resolve_specs(list(layout.page_bytes), specs)
        for fmt, spec in self.specs.items():
            want = (kf.page_bytes(spec, kv), kf.codebook_bytes(spec, kv))
            have = (layout.page_bytes[fmt], layout.codebook_bytes.get(fmt, 0))
            if want != have:
                raise ValueError(f"layout sizes for {fmt!r} are {have}, the codec needs {want}")
        pin = self.device.type == "cuda"
        self.arena = {
            "gpu": torch.zeros(
                layout.gpu_blocks * layout.block_bytes, dtype=torch.uint8, device=self.device
            ),
            "cpu": torch.zeros(
                layout.cpu_blocks * layout.block_bytes,
                dtype=torch.uint8,
                pin_memory=pin and layout.cpu_blocks > 0,
            ),
        }
        self._views = {(t, f): self._layer_view(t, f) for t in self.arena for f in self.specs}
        self._last_span: dict[int, int] = {}  # stream -> its newest span (warm start)
        self._checks: list[tuple[int, torch.Tensor]] = []  # deferred NaN/Inf checks (plan, ok)

    # -- raw bytes ---------------------------------------------------------------------------

    def item(self, loc: PageLoc) -> torch.Tensor:
        """Flat uint8 view of one item's bytes."""
        return self.arena[loc.tier][loc.offset : loc.offset + loc.nbytes]

    def _layer_view(self, tier: str, fmt: str) -> torch.Tensor:
        """[blocks, items per block, layers, 2, slice bytes] strided view of `fmt` items."""
        lay = self.alloc.layout
        per = lay.items_per_block(fmt)
        step = lay.page_bytes[fmt] // (2 * self.kv.layers)
        shape = (lay.blocks(tier), per, self.kv.layers, 2, step)
        strides = (lay.block_bytes, lay.page_bytes[fmt], 2 * step, step, 1)
        return self.arena[tier].as_strided(shape, strides)

    # -- writes ------------------------------------------------------------------------------

    def write_pages(self, pages: Sequence[int], k: torch.Tensor, v: torch.Tensor) -> None:
        """Store committed K/V [layers, H, len(pages) * T, D] (pre-RoPE) into bf16 pages."""
        t = self.kv.page_tokens
        want = (self.kv.layers, self.kv.heads, len(pages) * t, self.kv.head_dim)
        if tuple(k.shape) != want or tuple(v.shape) != want:
            raise ValueError(f"write_pages: k/v must be {want}, got {tuple(k.shape)}")
        for i, page in enumerate(pages):
            loc = self.alloc.location(page)
            if loc.fmt != kf.BF16:
                raise ValueError(f"page {page} is {loc.fmt}; committed pages are written bf16")
            views = kf.split_page(self.item(loc), kf.BF16, self.kv)
            for layer in range(self.kv.layers):
                views[layer][0]["values"].copy_(k[layer, :, i * t : (i + 1) * t])
                views[layer][1]["values"].copy_(v[layer, :, i * t : (i + 1) * t])

    def execute(self, plan: Plan, defer_checks: bool = False) -> None:
        """Do the copying/encoding `plan` describes; the caller then commits (or aborts).
        defer_checks: an encode's NaN/Inf check is queued on the device (no host sync) and
        raised by `finish_checks`, which the caller must run before committing."""
        if plan.kind == "move":
            for r in (*plan.relocations, *plan.codebook_moves):
                self.item(r.dst).copy_(self.item(r.src), non_blocking=True)
            if self.device.type == "cuda":
                torch.cuda.current_stream(self.device).synchronize()
            return
        self._encode(plan, defer_checks)

    def drop_checks(self) -> None:
        """Forget deferred checks (their plans failed or were abandoned)."""
        self._checks = []

    def finish_checks(self) -> None:
        """Raise the NaN/Inf error of a deferred encode check (one host sync for all of them,
        on the current stream): the plan must not be committed."""
        checks, self._checks = self._checks, []
        if not checks:
            return
        ok = torch.stack([c for _, c in checks]).cpu().tolist()
        for (plan_id, _), good in zip(checks, ok, strict=True):
            if not good:
                log.error("plan %d: its pages hold NaN/Inf; not encoded", plan_id)
                raise ValueError(
                    f"plan {plan_id}: KV pages hold non-finite values (NaN/Inf): "
                    "refusing to encode (decoded pages would silently hold NaNs)"
                )

    def _encode(self, plan: Plan, defer_checks: bool = False) -> None:
        """Encode the plan's pages: K and V of many layers per codec call (one batch of
        2 * layers rows), then one copy per page and field into the destination items."""
        assert plan.fmt is not None
        spec, pages = self.specs[plan.fmt], [r.page for r in plan.relocations]
        src = self.read_plan(pages, use_src=plan)
        kv, t = self.kv, self.kv.page_tokens
        page_f, book_f = kf.page_fields(spec, kv), kf.codebook_fields(spec, kv)
        dst = [kf.stacked(self.item(r.dst), page_f, kv) for r in plan.relocations]
        book = kf.stacked(self.item(plan.codebook), book_f, kv) if plan.codebook else None
        warm = self._warm_codebook(plan)
        per_layer = 2 * kv.heads * src.tokens * kv.head_dim * 2  # bf16 bytes of one layer's K, V
        step = max(1, min(kv.layers, self.encode_batch_bytes // per_layer))
        for lo in range(0, kv.layers, step):
            hi = min(kv.layers, lo + step)
            x = torch.empty(
                hi - lo,
                2,
                kv.heads,
                src.tokens,
                kv.head_dim,
                dtype=torch.bfloat16,
                device=self.device,
            )
            for layer in range(lo, hi):
                self.read_layer(src, layer, out=x[layer - lo])
            rows = slice(2 * lo, 2 * hi)  # row 2l + h: layer l, K (h = 0) / V (h = 1)
            w = None
            if warm is not None:
                shape = (2 * (hi - lo), kv.heads, 0, kv.head_dim)
                w = Encoded(warm[0], shape, "k", {n: v[rows] for n, v in warm[1].items()})
            if defer_checks:
                self._checks.append((plan.id, codec.all_finite(x)))
            enc = codec.encode(
                x.flatten(0, 1), spec, role="k", warm_start=w, backend=self.backend,
                check_finite=not defer_checks,
            )  # fmt: skip
            for i, views in enumerate(dst):
                for name, view in views.items():
                    view[rows].copy_(enc.tensors[name][:, :, i * t : (i + 1) * t])
            if book is not None:
                for name, view in book.items():
                    view[rows].copy_(enc.tensors[name])
        if plan.span is not None and plan.stream is not None:
            self._last_span[plan.stream] = plan.span

    def forget_stream(self, stream: int) -> None:
        """The stream ended: drop its warm-start span (the span itself is the allocator's)."""
        self._last_span.pop(stream, None)

    def _warm_codebook(self, plan: Plan):
        """(its spec, {name: [2 * layers, ...]} views) of the stream's previous span codebook,
        or None."""
        span = self._last_span.get(plan.stream) if plan.stream is not None else None
        try:
            loc = self.alloc.codebook(span) if span is not None else None
        except PageError as e:  # the span was freed since: start cold
            log.info(
                "stream %s: no warm start from span %s (%s); encoding cold", plan.stream, span, e
            )
            loc = None
        except Exception:  # unexpected, but a cold start is still correct
            log.warning(
                "stream %s: warm-start lookup of span %s failed; encoding cold",
                plan.stream,
                span,
                exc_info=True,
            )
            loc = None
        if loc is None or loc.tier != "gpu" or loc.fmt not in self.specs:
            return None
        spec = self.specs[loc.fmt]
        return spec, kf.stacked(self.item(loc), kf.codebook_fields(spec, self.kv), self.kv)

    # -- reads -------------------------------------------------------------------------------

    def read_plan(self, table: Sequence[int], use_src: Plan | None = None) -> ReadPlan:
        """Resolve `table` (page ids in token order) into runs; pages must be on the GPU.

        With `use_src`, pages of that pending plan are read from their source locations.
        """
        src = {r.page: r.src for r in use_src.relocations} if use_src is not None else {}
        runs, groups, t = [], [], self.kv.page_tokens
        for page in table:
            loc = src.get(page) or self.alloc.location(page)
            if loc.tier != "gpu":
                raise ValueError(f"page {page} is on the {loc.tier} tier: reload it first")
            span = self.alloc.span_of(page)  # a pending plan's pages keep their old span
            key = (loc.fmt, span)
            if not groups or groups[-1][0] != key:
                groups.append((key, []))
            groups[-1][1].append(loc)
        start = 0
        for (fmt, span), locs in groups:
            book = self.alloc.codebook(span) if span is not None else None
            idx = torch.tensor([[lc.block, lc.slot] for lc in locs], dtype=torch.int64)
            idx = idx.to(self.device)
            offs = tuple(lc.offset for lc in locs)
            runs.append(Run(fmt, book, idx[:, 0], idx[:, 1], start, len(locs) * t, offs))
            start += len(locs) * t
        return ReadPlan(tuple(runs), start)

    def read_layer(
        self, plan: ReadPlan, layer: int, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """K and V of one layer, bf16 [2, H, plan.tokens, D] (pre-RoPE).

        `out`: a bf16 [2, H, tokens, D] view with unit stride on D (e.g. a token-major
        workspace transposed) that pages are decoded / copied into directly; else allocated.
        """
        want = (2, self.kv.heads, plan.tokens, self.kv.head_dim)
        if out is None:
            out = torch.empty(want, dtype=torch.bfloat16, device=self.device)
        elif tuple(out.shape) != want or out.dtype != torch.bfloat16 or out.device != self.device:
            raise ValueError(
                f"read_layer: out is {out.dtype} {tuple(out.shape)} on {out.device}; "
                f"it must be bfloat16 {want} on {self.device}"
            )
        for run in plan.runs:
            rows = self._views[("gpu", run.fmt)][run.blocks, run.slots, layer]  # [n, 2, slice]
            dst = out[:, :, run.start : run.start + run.tokens]
            for half in range(2):
                self._decode_rows(run, rows[:, half], layer, half, dst[half])
        return out

    def _decode_rows(
        self, run: Run, rows: torch.Tensor, layer: int, half: int, dst: torch.Tensor
    ) -> None:
        """Write [H, n*T, D] bf16 into `dst` from gathered slices `rows` [n, slice] of one run."""
        spec = self.specs[run.fmt]
        t = kf.split_slices(rows, kf.page_fields(spec, self.kv))
        n, h, d, pt = rows.shape[0], self.kv.heads, self.kv.head_dim, self.kv.page_tokens
        if run.codebook is None:  # bf16 pages [n, H, T, D] -> dst [H, n, T, D]: one copy
            dst.unflatten(1, (n, pt)).copy_(t["values"].transpose(0, 1))
            return
        tensors = {
            name: x.transpose(0, 1).reshape(1, h, n * pt, *x.shape[3:]) for name, x in t.items()
        }
        book = kf.split_codebook(self.item(run.codebook), spec, self.kv)[layer][half]
        tensors.update({name: x[None] for name, x in book.items()})
        enc = Encoded(spec, (1, h, n * pt, d), "kv"[half], tensors)
        codec.decode(enc, out=dst[None], backend=self.backend)

    def check_invariants(self) -> None:
        """The allocator's audit, plus: every arena has exactly the layout's bytes."""
        self.alloc.check_invariants()
        lay = self.alloc.layout
        for tier, arena in self.arena.items():
            if arena.numel() != lay.blocks(tier) * lay.block_bytes:
                raise AssertionError(f"{tier} arena holds {arena.numel()} bytes")


def kv_budget_bytes(
    device: torch.device | str, kv_cache_memory_bytes: int | None = None, fraction: float = 0.9
) -> int:
    """Arena bytes: `kv_cache_memory_bytes` when given, else `fraction` of the GPU memory still
    free (call it after the model has loaded, so weights and activations are accounted for)."""
    if kv_cache_memory_bytes is not None:
        if kv_cache_memory_bytes <= 0:
            raise ValueError(f"kv_cache_memory_bytes = {kv_cache_memory_bytes}; it must be > 0")
        return int(kv_cache_memory_bytes)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction = {fraction}; use a value in (0, 1]")
    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError("on a CPU device give kv_cache_memory_bytes (no free-memory query)")
    free, _total = torch.cuda.mem_get_info(device)
    return int(free * fraction)
