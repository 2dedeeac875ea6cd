"""One engine replica (one GPU): the Engine, its thread, and the streams' frame buffers.

Every method takes `replica=` (the id part naming the owner; see routing.py) and `tenant=`:
a stream id from another replica or tenant answers None / False (the API's 404).
Public stream ids are "<replica id>-<engine stream id>".
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

from qvg_serve.engine.engine import Engine
from qvg_serve.engine.report import Chunk
from qvg_serve.serve import placement, stream_ids
from qvg_serve.serve.config import AppConfig
from qvg_serve.serve.disconnect import cancels_when_closed
from qvg_serve.serve.engine_loop import EngineLoop
from qvg_serve.serve.frames import (
    encode_jpegs,
    jpeg_size,
    mjpeg_end,
    mjpeg_part,
    mp4_from_jpegs,
    sse_event,
    sse_frame,
)
from qvg_serve.serve.metrics import Metrics

log = logging.getLogger("qvg_serve.serve.replica")

FPS = 16.0
"""Playback rate of video.mp4 and the default real-time rate (Self-Forcing's 16 fps)."""
KEEP_ENDED = 1024
"""Ended streams whose frames stay downloadable (oldest dropped first)."""


@dataclass
class StreamRecord:
    """Event-loop side of one stream: its JPEG frames and whether it ended."""

    tenant: str
    prompt: str
    frames_wanted: int
    created: float
    jpegs: list[bytes] = field(default_factory=list)
    chunks: list[int] = field(default_factory=list)  # chunk index of each frame
    size: tuple[int, int] = (0, 0)
    ended: str | None = None
    mp4: bytes | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()  # readers wait on the new one


class EngineReplica:
    """The Serve deployment class of the engine (bound in app.py)."""

    def __init__(self, args: dict[str, Any]) -> None:
        from ray import serve

        from qvg_serve.engine.runtime import load_runtime

        self.cfg = AppConfig.from_args(args)
        cpus = self.cfg.deployment.ray_actor_options.num_cpus
        _torch_threads(cpus)
        try:
            self.replica_id = serve.get_replica_context().replica_id.unique_id
        except Exception:  # outside Serve (tests of the class itself)
            self.replica_id = "local"
        rt = load_runtime(self.cfg.engine_config(), warn=lambda *a, **k: log.warning(a[0]))
        self.encoder_text = rt.text_encoder
        self.engine = Engine(
            rt.model,
            self.cfg.engine_config(),
            self.cfg.scheduler_config(),
            decoder=rt.decoder,
            device=rt.device,
        )
        self.frames_per_chunk = self.engine.facts.frames_per_chunk
        self.metrics = Metrics()
        self.streams: dict[int, StreamRecord] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.loop = EngineLoop(self.engine, self.metrics, self._chunk_done, self._ended)
        _serve_metrics_port(self.cfg.server.metrics_port, self.metrics)

    # -- engine thread -> event loop -------------------------------------------------------------

    def _chunk_done(self, sid: int, chunk: Chunk) -> None:  # encoder thread
        jpegs = encode_jpegs(chunk.frames)
        self._post(self._add_frames, sid, chunk.index, jpegs)

    def _ended(self, sid: int, reason: str) -> None:  # encoder thread
        self._post(self._mark_ended, sid, reason)

    def _post(self, fn, *args) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(fn, *args)

    def _add_frames(self, sid: int, chunk: int, jpegs: list[bytes]) -> None:
        rec = self.streams.get(sid)
        if rec is None or rec.ended is not None:
            return
        room = rec.frames_wanted - len(rec.jpegs)  # the last chunk may overshoot: trim
        rec.jpegs.extend(jpegs[:room])
        rec.chunks.extend([chunk] * min(room, len(jpegs)))
        if rec.size == (0, 0) and jpegs:
            rec.size = jpeg_size(jpegs[0])
        rec.notify()

    def _mark_ended(self, sid: int, reason: str) -> None:
        rec = self.streams.get(sid)
        if rec is not None and rec.ended is None:
            rec.ended = reason
            rec.notify()
        ended = [s for s, r in self.streams.items() if r.ended is not None]
        for old in ended[: max(0, len(ended) - KEEP_ENDED)]:
            del self.streams[old]

    # -- requests -------------------------------------------------------------------------------

    def _own(self, stream: str, tenant: str, replica: str) -> tuple[int, StreamRecord] | None:
        """The stream's engine id and record if it lives here and belongs to `tenant`."""
        sid = stream_ids.engine_id(stream, self.replica_id) if replica == self.replica_id else None
        rec = None if sid is None else self.streams.get(sid)
        return (sid, rec) if sid is not None and rec is not None and rec.tenant == tenant else None

    async def _run(self, fn, *args):
        return await asyncio.wrap_future(self.loop.call(fn, *args))

    async def create(
        self,
        *,
        tenant: str,
        prompt: str,
        frames: int,
        seed: int,
        priority: int,
        target_fps: float | None,
        avoid: list[str] | None = None,  # for the router (placement.py), not used here
    ) -> dict[str, Any]:
        self._loop = asyncio.get_running_loop()
        try:
            text = self.encoder_text.encode([prompt])[0]
        except ValueError as exc:  # e.g. a prompt without a single word
            return {"accepted": False, "reason": "bad_prompt", "message": str(exc)}
        chunks = math.ceil(frames / self.frames_per_chunk)

        def submit():
            sid, adm = self.engine.submit(
                text,
                chunks=chunks,
                seed=seed,
                tenant=tenant,
                priority=priority,
                target_fps=target_fps,
            )
            if adm.accepted:
                self.loop.submitted(sid)  # the record is posted before any chunk can be
                self._post(
                    self.streams.__setitem__, sid, StreamRecord(tenant, prompt, frames, time.time())
                )
            else:
                self.metrics.reject(_REJECT_METRIC.get(adm.reason, "invalid"))
            return sid, adm

        sid, adm = await self._run(submit)
        return {
            "id": stream_ids.make(self.replica_id, sid),
            "accepted": adm.accepted,
            "reason": adm.reason,
            "retry_after_s": adm.retry_after_s,
        }

    async def status(self, stream: str, *, tenant: str, replica: str) -> dict | None:
        own = self._own(stream, tenant, replica)
        if own is None:
            return None
        sid, rec = own
        snap = await self._run(self.engine.snapshot, sid)
        while snap["end_reason"] is not None and rec.ended is None:  # frames still encoding
            waiter = rec.changed
            await waiter.wait()
        return {
            "id": stream,
            "prompt": rec.prompt,
            "frames_done": len(rec.jpegs),
            "frames_wanted": rec.frames_wanted,
            **snap,
            "end_reason": rec.ended or snap["end_reason"],
        }

    async def act(
        self, stream: str, *, tenant: str, replica: str, prompt: str
    ) -> bool | str | None:
        own = self._own(stream, tenant, replica)
        if own is None:
            return None
        sid, rec = own
        try:
            text = self.encoder_text.encode([prompt])[0]
        except ValueError as exc:
            return f"bad_prompt: {exc}"

        ok = await self._run(self.engine.set_text, sid, text)
        if ok:
            rec.prompt = prompt
        return ok

    async def cancel(self, stream: str, *, tenant: str, replica: str) -> dict | None:
        own = self._own(stream, tenant, replica)
        if own is None:
            return None
        sid, _ = own

        res = await self._run(self.engine.cancel, sid)
        return {"cancelled": res.live, "pages_held": res.pages_held}

    @cancels_when_closed  # cancel_on_disconnect=True: closing early cancels (disconnect.py)
    async def frames(self, stream: str, *, tenant: str, replica: str, fmt: str, start: int):
        """Frames from `start` on as MJPEG parts or SSE events, live until the stream ends."""
        own = self._own(stream, tenant, replica)
        if own is None:
            return
        _, rec = own
        i = start
        while True:
            waiter = rec.changed
            while i < len(rec.jpegs):
                jpeg = rec.jpegs[i]
                yield (
                    mjpeg_part(jpeg, i)
                    if fmt == "mjpeg"
                    else sse_frame(jpeg, i, rec.chunks[i], rec.size)
                )
                i += 1
            if rec.ended is not None:
                yield (
                    mjpeg_end()
                    if fmt == "mjpeg"
                    else sse_event("end", {"reason": rec.ended, "frames": len(rec.jpegs)})
                )
                return
            await waiter.wait()

    async def video(self, stream: str, *, tenant: str, replica: str) -> bytes | str | None:
        """MP4 bytes; "running" while the stream is live; "empty" if it ended without frames."""
        own = self._own(stream, tenant, replica)
        if own is None:
            return None
        _, rec = own
        if rec.ended is None:
            return "running"
        if not rec.jpegs:
            return "empty"
        if rec.mp4 is None:
            rec.mp4 = await asyncio.to_thread(mp4_from_jpegs, rec.jpegs, FPS)
        return rec.mp4

    async def capacity(
        self, *, frames: int | None = None, replica: str | None = None
    ) -> dict[str, Any] | None:
        """Free KV and how many more streams admission takes: of `frames` video frames, or of
        the engine's default length (the same projection admission uses)."""
        if replica is not None and replica != self.replica_id:  # fanout.py: not the one asked
            return None
        chunks = {"chunks": math.ceil(frames / self.frames_per_chunk)} if frames else {}
        got = await self._run(lambda: self.engine.capacity(**chunks))
        return {"replica": self.replica_id, **got}

    async def record_routing_stats(self) -> dict[str, Any]:
        """Serve's routing-stats hook: free KV for the router's placement (placement.py)."""
        sched, fpc = self.cfg.scheduler, self.engine.facts.latent_frames_per_chunk  # pages
        return await self._run(
            lambda: placement.routing_stats(
                self.engine.capacity(),
                self.engine.kv_stats().bf16_page_bytes,
                sched.sink_pages + sched.window_pages + fpc,
            )
        )

    async def roster(self, *, roster: list[str]) -> list[str]:
        """Every replica's id, as the router filled it in (fanout.py)."""
        return roster

    async def metrics_text(self) -> tuple[bytes, str]:
        return self.metrics.exposition()

    async def reject(self, reason: str) -> None:
        self.metrics.reject(reason)

    async def health(self) -> dict[str, Any]:
        return {"replica": self.replica_id, "engine_thread": self.loop.alive()}

    # -- the web page's reads (ui.py) -----------------------------------------------------------

    async def list_streams(self, *, tenant: str, replica: str | None = None) -> dict[str, Any]:
        """This replica's streams of `tenant`, newest first. A call routed to a replica that is
        gone lands on another one (router.py), so the answer names the replica answering."""
        mine = reversed(self.streams.items())
        listed = [
            _summary(stream_ids.make(self.replica_id, n), r) for n, r in mine if r.tenant == tenant
        ]
        return {"replica": self.replica_id, "streams": listed}

    async def kv(self) -> dict[str, Any]:
        return {"replica": self.replica_id, **await self._run(self.engine.kv_summary)}

    async def model_info(self) -> dict[str, Any]:
        facts = await self._run(self.engine.model_info, self.encoder_text)
        return {**facts, "frames_per_chunk": self.frames_per_chunk, "fps": FPS}

    def check_health(self) -> None:  # Serve's health check: a dead engine thread restarts us
        if not self.loop.alive():
            raise RuntimeError("engine thread died")

    def __del__(self) -> None:
        loop = getattr(self, "loop", None)
        if loop is not None:
            loop.stop(wait=False)


def _summary(public_id: str, rec: StreamRecord) -> dict[str, Any]:
    return {"id": public_id, "prompt": rec.prompt,
            "frames_done": len(rec.jpegs), "frames_wanted": rec.frames_wanted,
            "created": rec.created, "end_reason": rec.ended}  # fmt: skip


_REJECT_METRIC = {"kv_pressure": "capacity", "queue_full": "queue_full", "too_large": "invalid"}


def _torch_threads(cpus: float) -> None:
    """Replicas sharing a host must not each spawn a thread per core."""
    import torch

    if os.environ.get("OMP_NUM_THREADS") is None:
        torch.set_num_threads(max(1, int(cpus)))


def _serve_metrics_port(port: int | None, metrics: Metrics) -> None:
    if port is None:
        return
    from prometheus_client import start_http_server

    try:
        start_http_server(port, registry=metrics.registry)
    except OSError as exc:  # another replica on this host holds it (one replica per pod in k8s)
        log.warning("metrics port %d: %s; this replica's metrics only via GET /metrics", port, exc)
