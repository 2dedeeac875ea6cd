"""The generation engine: scheduler decides, the runner (this) executes, streams get frames.

One `step()`:
    out = scheduler.schedule()                 batch, encode/move plans, freed pages
    execute out.orders on the pool             (plans committed by the scheduler in update());
    one model forward for the whole batch      encodes beside the forward (orders.py); per-
                                               sample timesteps: streams at different
                                               denoising steps, commits and recomputes share it
    denoise items: sampler step                commit items: write the chunk's K/V into its
                                               new bf16 pages, decode frames, emit them
    scheduler.update(StepResult)
    out.ended -> release those streams' tensor state; out.freed -> forget those pages

The engine room's door (`submit`, `cancel`, `set_text`, `set_page_leases`, `step()` ->
`StepReport`, `snapshot`, `capacity`, `kv_stats`, `facts`, `busy`; plain values, `report.py`),
used from one thread; `new_stream_id`, `stream_spec` and `check_text` from any. Tensor-side
per-stream state lives here (noise, latents, the small committed latents a preempted stream
rebuilds its cache from); pages and policy live in the scheduler.
"""

from __future__ import annotations

import itertools
import logging
import threading
from dataclasses import dataclass, field

import torch

from qvg_serve.engine import sampler, views
from qvg_serve.engine.config import EngineConfig, codec_specs
from qvg_serve.engine.kv_pool import KVPool, kv_budget_bytes, pool_layout
from qvg_serve.engine.orders import Orders
from qvg_serve.engine.paged_attention import Workspace
from qvg_serve.engine.paged_context import Entry, PagedContext, run_batch
from qvg_serve.engine.report import (
    CancelResult,
    Chunk,
    KVStats,
    ModelFacts,
    ResumeState,
    StepReport,
    StepStats,
)
from qvg_serve.models.base import ChunkInput, ModelConfig, VideoModel
from qvg_serve.models.hooks import LatentPreview
from scheduler import audit
from scheduler.config import SchedulerConfig
from scheduler.core import Scheduler
from scheduler.output import COMMIT, DENOISE, Admission, BatchItem, SchedulerOutput, StepResult
from scheduler.pages import PageAllocator
from scheduler.stream import StreamSpec

log = logging.getLogger(__name__)

SHIFT = 5.0
"""Flow-matching timestep shift (Wan2.1 / Self-Forcing use 5 at 480p)."""


@dataclass
class StreamTensors:
    """Tensor-side state of one live stream (released when the scheduler reports its end)."""

    text: torch.Tensor  # [text_len, text_dim] on the device
    noise: sampler.StreamNoise
    x: torch.Tensor | None = None  # current noisy latents of the chunk being denoised
    x0: torch.Tensor | None = None  # clean estimate after the last denoising step
    committed: list[torch.Tensor] = field(default_factory=list)  # [C, h, w] per frame (CPU)


class Engine:
    """Runs a model over many streams through the paged pool."""

    def __init__(
        self,
        model: VideoModel,
        config: EngineConfig,
        scheduler_config: SchedulerConfig,
        decoder=None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.model, self.cfg, self.device = model, config, torch.device(device)
        mc: ModelConfig = model.config
        self.mc = mc
        self.decoder = decoder if decoder is not None else LatentPreview(mc)
        budget = kv_budget_bytes(
            self.device, config.kv_cache_memory_bytes, config.gpu_memory_fraction
        )
        kv = mc.kv_shape()
        specs = codec_specs(config, mc.tokens_per_frame)
        layout = pool_layout(kv, config.formats, budget, config.cpu_offload_bytes, specs)
        self.alloc = PageAllocator(layout, debug=False)
        self.pool = KVPool(kv, self.alloc, self.device, specs)
        self.orders = Orders(self.pool, self.device, config.overlap_encodes)
        self.scheduler = Scheduler(scheduler_config, self.alloc)
        ws_tokens = config.max_batch_kv_tokens or self._default_workspace(scheduler_config)
        self.ws = Workspace(ws_tokens, mc.heads, mc.head_dim, self.device, self._dtype(), config.read_ahead)  # noqa: E501  # fmt: skip
        self.streams: dict[int, StreamTensors] = {}
        self._page_frame: dict[int, int] = {}  # page id -> latent frame it holds (RoPE position)
        self._ids = itertools.count(1)
        self._ids_lock = threading.Lock()

    def _dtype(self) -> torch.dtype:
        return next(iter(self.model.parameters())).dtype  # type: ignore[attr-defined]

    def _default_workspace(self, sc: SchedulerConfig) -> int:
        """Every stream of a full batch with the whole GPU arena as history, capped at what
        one layer of the arena could hold in bf16 (history can never exceed the pool)."""
        lay = self.alloc.layout
        bf16_pages = lay.gpu_blocks * lay.items_per_block("bf16")
        quant = [f for f in lay.page_bytes if f != "bf16"]
        most = max([bf16_pages, *(lay.gpu_blocks * lay.items_per_block(f) for f in quant)])
        return (most + sc.max_batch_streams * self.mc.frames_per_chunk) * self.mc.tokens_per_frame

    # -- client actions ------------------------------------------------------------------------

    def submit(
        self,
        text: torch.Tensor,
        *,
        chunks: int | None = 7,
        seed: int = 0,
        tenant: str = "default",
        priority: int = 1,
        target_fps: float | None = None,
        stream_id: int | None = None,
        resume: ResumeState | None = None,
        reserved: bool = False,
    ) -> tuple[int, Admission]:
        """Queue a stream conditioned on text embeddings [text_len, text_dim]; with `resume`,
        continue one that committed `resume.chunks_done` chunks elsewhere (its cache is
        rebuilt from their latents before its next chunk). `reserved`: a server's intake
        admitted it already (`stream_id` from `new_stream_id`; Lifecycle.submit)."""
        mc = self.mc
        self.check_text(text)
        done = 0 if resume is None else resume.checked(mc)
        sid = self.new_stream_id() if stream_id is None else stream_id
        spec = self.stream_spec(sid, chunks, tenant, priority, target_fps)
        adm = self.scheduler.submit(spec, resume_chunks=done, reserved=reserved)
        if adm.accepted:
            shape = (mc.in_channels, mc.frames_per_chunk, mc.latent_height, mc.latent_width)
            st = StreamTensors(
                text.to(self.device, self._dtype()), sampler.StreamNoise(seed, shape)
            )
            if resume is not None:
                st.committed = list(resume.latents.float().cpu().unbind(1))
            self.streams[sid] = st
        return sid, adm

    def new_stream_id(self) -> int:
        """A stream id never used here (any thread)."""
        with self._ids_lock:
            return next(self._ids)

    def intake_view(self):  # what admission of a new stream depends on now (IntakeView)
        return self.scheduler.intake_view()

    def count_rejection(self, reason: str) -> None:
        """Count a submit an intake rejected on a published view, as `submit` would."""
        self.scheduler.count_rejection(reason)

    def stream_spec(
        self,
        sid: int,
        chunks: int | None,
        tenant: str = "default",
        priority: int = 1,
        target_fps: float | None = None,
    ) -> StreamSpec:
        mc = self.mc
        return StreamSpec(
            sid, tenant, priority, chunks, mc.frames_per_chunk, mc.tokens_per_frame,
            len(mc.timesteps), target_fps, mc.frames_per_latent,
        )  # fmt: skip

    def cancel(self, stream_id: int, reason: str = "cancelled") -> CancelResult:
        """End a stream now: its pages are freed at once, chunks not yet stepped are never made.
        Its end (with `reason`) is reported by the next `step()`'s `ended`, like any end."""
        live = self.scheduler.cancel(stream_id, reason)
        return CancelResult(live, len(self.alloc.pages_of(stream_id)))

    def set_text(self, stream_id: int, text: torch.Tensor) -> bool:
        """New conditioning from the next denoising pass on (prompt switch / action); False if
        the stream is not live (unknown, or ended)."""
        self.check_text(text)
        st = self.streams.get(stream_id)
        if st is None or stream_id not in self.scheduler.streams:
            return False
        st.text = text.to(self.device, self._dtype())
        return True

    def reconfigure(self, scheduler_config: SchedulerConfig) -> None:
        """New scheduler tunables from the next step on (live streams keep their pages).
        Raises ValueError if the batch they allow outgrows the preallocated workspace."""
        if self.cfg.max_batch_kv_tokens is None:
            need, have = self._default_workspace(scheduler_config), self.ws.kv.shape[1]
            if need > have:
                raise ValueError(
                    f"scheduler.max_batch_streams = {scheduler_config.max_batch_streams} needs "
                    f"a {need}-token workspace, this engine holds {have}; lower it or restart "
                    "the replica (a change of args, not of user_config)"
                )
        self.scheduler.reconfigure(scheduler_config)

    def set_page_leases(self, leases: dict[str, int] | None) -> None:
        self.scheduler.set_page_leases(leases)  # tenants' shares of cluster-wide caps

    def check_text(self, text: torch.Tensor) -> None:
        want = (self.mc.text_len, self.mc.text_dim)
        if tuple(text.shape) != want:
            raise ValueError(f"text embeddings must be {want}, got {tuple(text.shape)}")

    # -- the step ------------------------------------------------------------------------------

    def step(self) -> StepReport:
        """One scheduler decision, its plans, one forward pass, the scheduler's update."""
        out = self.scheduler.schedule()
        moves, encodes = self.orders.split(out.orders)
        done, failed = self.orders.run(moves)  # the batch may read what a reload brings
        advanced: list[int] = []
        chunks: list[tuple[int, Chunk]] = []
        if out.batch:
            self.orders.mark()
            ctx, flows = self._launch(out.batch)
            d, f = self.orders.run(encodes, beside=True)  # overlaps the forward (orders.py)
            advanced, chunks = self._finish(out.batch, ctx, flows)
        else:
            d, f = self.orders.run(encodes)
        done, failed = tuple(done + d), tuple(failed + f)
        self.scheduler.update(StepResult(out.step, tuple(advanced), (), done, failed))
        ended = self._forget(out)
        stats = StepStats(
            len(done), len(failed), len(out.freed), len(out.admitted), len(out.preempted),
            len(out.degraded), out.gpu_use,
        )  # fmt: skip
        return StepReport(out.step, len(out.batch), tuple(chunks), ended, stats)

    def _forget(self, out: SchedulerOutput) -> tuple[tuple[int, str], ...]:
        """Release what the engine holds for pages and streams the scheduler let go of; the
        ends of streams it still held (one `drop_all` already reported are skipped)."""
        for page in out.freed:
            self._page_frame.pop(page, None)
        ended = tuple((sid, why) for sid, why in out.ended if sid in self.streams)
        for sid, _ in ended:
            del self.streams[sid]
            self.pool.forget_stream(sid)
        return ended

    def _launch(self, batch: tuple[BatchItem, ...]) -> tuple[PagedContext, list[torch.Tensor]]:
        inputs, entries = [], []
        for item in batch:
            inp, entry = self._prepare(item)
            inputs.append(inp)
            entries.append(entry)
        guided = [i for i, item in enumerate(batch) if item.kind == DENOISE]
        with torch.no_grad():
            return run_batch(
                self.model, self.pool, self.ws, inputs, entries, guided, self.mc.guidance
            )

    def _finish(self, batch, ctx: PagedContext, flows) -> tuple[list[int], list[tuple[int, Chunk]]]:
        chunks = []
        for i, (item, flow) in enumerate(zip(batch, flows, strict=True)):
            if item.kind == DENOISE:
                self._denoised(item, flow)
            else:
                self._write_pages(item, ctx, i)
                if item.kind == COMMIT:
                    chunks.append((item.stream_id, self._emit(item)))
        return [item.stream_id for item in batch], chunks

    def _prepare(self, item: BatchItem) -> tuple[ChunkInput, Entry]:
        st, mc = self.streams[item.stream_id], self.mc
        start = item.chunk * mc.frames_per_chunk
        if item.kind == DENOISE:
            if item.step == 0 or st.x is None:
                st.noise.begin(item.chunk)  # chunk k's noise: a function of (seed, k)
                st.x = sampler.start(st.noise, self.device, self._dtype())
            latents, t = st.x, mc.timesteps[item.step]
            frames = list(range(start, start + mc.frames_per_chunk))
        elif item.kind == COMMIT:
            latents, t = st.x0, 0.0
            frames = list(range(start, start + mc.frames_per_chunk))
        else:
            frames = self._recompute_frames(st, len(item.new_pages))
            latents = torch.stack([st.committed[f] for f in frames], 1).to(self.device)
            t = 0.0
        assert latents is not None
        q_pos = self._positions(frames)
        hist = self.pool.read_plan(item.pages)
        hist_pos = self._positions([self._page_frame[p] for p in item.pages])
        capture = item.kind != DENOISE
        if capture:  # the pages this pass writes map to these frames
            self._page_frame.update(zip(item.new_pages, frames, strict=True))
        return ChunkInput(latents, t, st.text, start), Entry(hist, hist_pos, q_pos, capture)

    def _recompute_frames(self, st: StreamTensors, n: int) -> list[int]:
        """Frames a recompute rebuilds: the sink, then the most recent frames (the window)."""
        total = len(st.committed)
        sink = min(self.scheduler.config.sink_pages, n, total)
        return list(range(sink)) + list(range(total - (n - sink), total))

    def _positions(self, frames: list[int]) -> torch.Tensor:
        tpf = self.mc.tokens_per_frame
        if not frames:
            return torch.zeros(0, dtype=torch.int64, device=self.device)
        f = torch.tensor(frames, dtype=torch.int64, device=self.device)
        return (f[:, None] * tpf + torch.arange(tpf, device=self.device)).reshape(-1)

    def _denoised(self, item: BatchItem, flow: torch.Tensor) -> None:
        st, steps = self.streams[item.stream_id], self.mc.timesteps
        t_next = steps[item.step + 1] if item.step + 1 < len(steps) else None
        assert st.x is not None
        st.x, st.x0 = sampler.step(st.x, flow, steps[item.step], t_next, SHIFT, st.noise)

    def _write_pages(self, item: BatchItem, ctx: PagedContext, index: int) -> None:
        k, v = ctx.kv_of(index, self.mc.layers)
        self.pool.write_pages(item.new_pages, k, v)

    def _emit(self, item: BatchItem) -> Chunk:
        st = self.streams[item.stream_id]
        assert st.x0 is not None
        clean = st.x0.float().cpu()
        st.committed.extend(clean.unbind(1))
        st.x = st.x0 = None
        return Chunk(item.chunk, self.decoder.decode(clean), clean)

    # -- read-only views -----------------------------------------------------------------------

    def busy(self) -> bool:
        """Whether any stream is live or has an end not yet reported by `step()`."""
        return bool(self.streams)

    def live_streams(self) -> tuple[int, ...]:
        """Streams waiting, running or preempted."""
        return tuple(self.scheduler.streams)

    def may_finish_next(self) -> frozenset[int]:
        """Live streams whose next pass may be their last (the commit of their last chunk)."""
        return frozenset(
            sid for sid, s in self.scheduler.streams.items()
            if s.spec.target_chunks is not None and s.spec.target_chunks - s.chunk <= 1
            and s.step >= s.spec.denoise_steps
        )  # fmt: skip

    def drop_all(self) -> tuple[int, ...]:
        """Last resort after a failing step: cancel every stream and release its tensor state
        without a step; returns the streams dropped (the caller reports their ends)."""
        sids = tuple(self.streams)
        for sid in sids:
            self.scheduler.cancel(sid, "failed: engine error")
            self.streams.pop(sid)
            self.pool.forget_stream(sid)
        return sids

    def snapshot(self, stream_id: int) -> dict:
        """State, pages and bytes by format and tier, ladder history, end reason (views.py)."""
        return views.stream_snapshot(self.scheduler.get(stream_id), self.alloc.layout.page_bytes)

    def capacity(self, chunks: int | None = 7) -> dict:
        """Free KV, and how many more streams of `chunks` chunks admission would take now
        (the same projection admission uses; views.py)."""
        spec = self.stream_spec(0, chunks)
        return views.capacity(self.alloc, self.scheduler, self.scheduler.streams_that_fit(spec))

    def kv_stats(self) -> KVStats:
        return views.kv_stats(self.alloc, self.scheduler)

    def kv_summary(self) -> dict:
        """The web page's KV memory picture (views.py)."""
        return views.kv_summary(self)

    def model_info(self, text_encoder=None) -> dict:
        """Model facts, page sizes and the text encoder's vocabulary if it has one."""
        return views.model_facts(self, text_encoder)

    @property
    def facts(self) -> ModelFacts:
        mc = self.mc
        per_latent = getattr(self.decoder, "temporal", mc.frames_per_latent)
        return ModelFacts(
            mc.name, mc.frames_per_chunk * per_latent, mc.frames_per_chunk, mc.tokens_per_frame,
            mc.layers, (mc.text_len, mc.text_dim),
        )  # fmt: skip

    def check_invariants(self) -> None:
        """Accounting and bytes agree, the scheduler's with the pool's (tests call this after
        every step)."""
        self.pool.check_invariants()
        audit.check(self.scheduler)

    def run_until_idle(self, max_steps: int = 100_000) -> dict[int, list[Chunk]]:
        """Step until every stream ended; the chunks each stream produced, in order."""
        got: dict[int, list[Chunk]] = {}
        for _ in range(max_steps):
            for sid, chunk in self.step().chunks:
                got.setdefault(sid, []).append(chunk)
            if not self.busy():
                return got
        raise RuntimeError(f"streams still running after {max_steps} steps")
