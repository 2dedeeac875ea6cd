"""One engine replica (one GPU): the Engine, its thread, and its side of the stream store.

Every per-stream method takes the public stream id, `replica=` (the home the store names; the
request router sends the call here, router.py) and `tenant=`: a stream this replica does not
run, or another tenant's, answers None (the ingress then asks the store: 404, or recovering).
A stream's frames, end and durable state are in the store (store.py, durable.py): the ingress
reads frames from there, so viewers never hold this replica's request slots.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import os
import time
from typing import Any

from qvg_serve.engine.engine import Engine
from qvg_serve.serve import placement, stream_ids
from qvg_serve.serve.config import AppConfig
from qvg_serve.serve.durable import Homing, Local
from qvg_serve.serve.engine_loop import EngineLoop
from qvg_serve.serve.metrics import Metrics
from qvg_serve.serve.store import get_store

log = logging.getLogger("qvg_serve.serve.replica")

FPS = 16.0
"""Playback rate of video.mp4 and the default real-time rate (Self-Forcing's 16 fps)."""


class EngineReplica:
    """The Serve deployment class of the engine (bound in app.py)."""

    def __init__(self, args: dict[str, Any]) -> None:
        from ray import serve

        from qvg_serve.engine.runtime import load_runtime

        self.cfg = AppConfig.from_args(args)
        cpus = self.cfg.deployment.ray_actor_options.num_cpus
        _torch_threads(cpus)
        try:
            ctx = serve.get_replica_context()
            self.replica_id, app = ctx.replica_id.unique_id, ctx.app_name
        except Exception:  # outside Serve (tests of the class itself)
            self.replica_id, app = "local", "local"
        self.runtime = load_runtime(
            self.cfg.engine_config(), warn=lambda *a, **k: log.warning(a[0])
        )
        self.encoder_text = self.runtime.text_encoder
        self.app, self.engine = app, None  # built by the first reconfigure (Serve calls it
        # right after this constructor, with user_config's scheduler tunables)
        self.metrics = Metrics()
        _serve_metrics_port(self.cfg.server.metrics_port, self.metrics)

    def _start(self, scheduler_config) -> None:
        rt = self.runtime
        self.engine = Engine(
            rt.model,
            self.cfg.engine_config(),
            scheduler_config,
            decoder=rt.decoder,
            device=rt.device,
        )
        self.engine.set_page_leases({})  # tenant caps are cluster-wide: pages by lease only
        self.frames_per_chunk = self.engine.facts.frames_per_chunk
        dur = self.cfg.durability
        self.store = get_store(
            self.app, dur.heartbeat_s, dur.dead_after_s, dur.retention_s, dur.spool_config(self.app)
        )
        self.loop = EngineLoop(self.engine, self.metrics, self._chunk_done, self._ended)
        self.homing = Homing(
            self.replica_id,
            self.store,
            self.engine,
            self.loop,
            self._encode,
            dur.heartbeat_s,
            on_frames=self.metrics.set_frame_bytes,
        )
        self.homing.start()

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Serve's live config (`user_config`): tunables applied without a new replica."""
        tunables = dict(user_config or {})
        scheduler = tunables.pop("scheduler", {})
        if tunables:
            raise ValueError(
                f"user_config keys {sorted(tunables)} are not tunables; only 'scheduler' is "
                "(deployment settings go in Serve's deployments: entry, the rest in args)"
            )
        merged = self.cfg.model_dump(mode="json") | {"scheduler": scheduler}
        config = AppConfig.from_args(merged).scheduler_config()  # formats checked vs engine
        self.tunables = hashlib.sha1(repr(sorted(scheduler.items())).encode()).hexdigest()[:12]
        self.scheduler_config = config
        if self.engine is None:
            self._start(config)
        else:
            self.loop.call(self.engine.reconfigure, config).result(timeout=60)
        log.info("replica %s: scheduler tunables applied", self.replica_id)

    # -- engine thread / encoder thread -> store ------------------------------------------------

    def _chunk_done(self, sid: int, chunk) -> None:  # encoder thread
        self.homing.on_chunk(sid, chunk)

    def _ended(self, sid: int, reason: str) -> None:  # encoder thread
        self.homing.on_end(sid, reason)

    def _encode(self, prompt: str):
        return self.encoder_text.encode([prompt])[0]

    # -- requests -------------------------------------------------------------------------------

    def _own(self, stream: str, tenant: str, replica: str) -> Local | None:
        """The stream's local record if it runs here and belongs to `tenant`."""
        return self.homing.local(stream, tenant) if replica == self.replica_id else None

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
        try:
            text = self._encode(prompt)
        except ValueError as exc:  # e.g. a prompt without a single word
            return {"accepted": False, "reason": "bad_prompt", "message": str(exc)}
        chunks = math.ceil(frames / self.frames_per_chunk)
        meta = {"tenant": tenant, "prompt": prompt, "frames": frames, "seed": seed,
                "priority": priority, "target_fps": target_fps, "created": time.time()}  # fmt: skip

        intake = self.loop.intake  # answers now: no waiting for the step in progress
        sid, adm = intake.admit(
            text, chunks=chunks, tenant=tenant, priority=priority, target_fps=target_fps
        )
        if not adm.accepted:
            self.metrics.reject(_REJECT_METRIC.get(adm.reason, "invalid"))
        else:
            self.loop.submitted(sid)
            loc = Local(stream_ids.make(self.replica_id, sid), sid, tenant, frames, known=False)
            ref = self.homing.register(loc, meta)  # before the engine's submit runs: a
            intake.submit(  # chunk always finds its stream tracked
                sid, text, self.loop.refused, chunks=chunks, seed=seed, tenant=tenant,
                priority=priority, target_fps=target_fps,
            )  # fmt: skip
            try:
                await ref  # the store knows it before the client gets its id
            except BaseException:  # no id for the client: the stream must not run on
                self.loop.call(self.engine.cancel, sid, "failed: stream store unreachable")
                raise
            loc.known = True  # from now on in this replica's heartbeats
        return {
            "id": stream_ids.make(self.replica_id, sid),
            "accepted": adm.accepted,
            "reason": adm.reason,
            "retry_after_s": adm.retry_after_s,
        }

    async def status(self, stream: str, *, tenant: str, replica: str) -> dict | None:
        """The engine's snapshot of a stream running here (the ingress adds the store's view)."""
        loc = self._own(stream, tenant, replica)
        if loc is None:
            return None
        snap = self.loop.intake.snapshot(loc.sid)  # as of the last step, if it can answer
        return snap if snap is not None else await self._run(self.engine.snapshot, loc.sid)

    async def act(
        self, stream: str, *, tenant: str, replica: str, prompt: str
    ) -> bool | str | None:
        loc = self._own(stream, tenant, replica)
        if loc is None:
            return None
        try:
            text = self._encode(prompt)
        except ValueError as exc:
            return f"bad_prompt: {exc}"

        def apply():
            ok = self.engine.set_text(loc.sid, text)
            if ok:  # the prompt a re-homed stream continues with
                chunk = self.engine.snapshot(loc.sid)["chunks_done"]
                self.store.act.remote(stream, self.replica_id, chunk, prompt)
            return ok

        return await self._run(apply)

    async def cancel(self, stream: str, *, tenant: str, replica: str) -> dict | None:
        loc = self._own(stream, tenant, replica)
        if loc is None:
            return None
        res = self.loop.intake.cancel(loc.sid)
        if res is None:  # only the engine thread can tell (intake.py)
            res = await self._run(self.engine.cancel, loc.sid)
        return {"cancelled": res.live, "pages_held": res.pages_held}

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
        if self.engine is None:  # before the first reconfigure: nothing to place on yet
            return {}
        sched, fpc = self.scheduler_config, self.engine.facts.latent_frames_per_chunk
        return await self._run(
            lambda: placement.routing_stats(
                self.engine.capacity(),
                self.engine.kv_stats().bf16_page_bytes,
                sched.sink_pages + sched.window_pages + fpc,  # pages
            )
        )

    async def roster(self, *, roster: list[str]) -> list[str]:
        """Every replica's id, as the router filled it in (fanout.py)."""
        return roster

    async def metrics_text(self) -> tuple[bytes, str]:
        return self.metrics.exposition()

    async def reject(self, reason: str) -> None:
        self.metrics.reject(reason)

    # -- the web page's reads (ui.py) -----------------------------------------------------------

    async def kv(self) -> dict[str, Any]:
        return {"replica": self.replica_id, **await self._run(self.engine.kv_summary)}

    async def model_info(self) -> dict[str, Any]:
        facts = await self._run(self.engine.model_info, self.encoder_text)
        return {**facts, "frames_per_chunk": self.frames_per_chunk, "fps": FPS}

    async def health(self) -> dict[str, Any]:
        return {"replica": self.replica_id, "engine_thread": self.loop.alive(),
                "pid": os.getpid(), "tunables": self.tunables}  # fmt: skip

    def check_health(self) -> None:  # Serve's health check: a dead engine thread restarts us
        if self.engine is not None and not self.loop.alive():
            raise RuntimeError("engine thread died")

    def __del__(self) -> None:
        """Serve's graceful stop (after its drain of open requests, within
        graceful_shutdown_timeout_s = durability.handover_timeout_s): stop stepping, hand every
        live stream to the store, which re-homes it on another replica."""
        loop, homing = getattr(self, "loop", None), getattr(self, "homing", None)
        if loop is None or homing is None:
            return
        loop.stop(wait=True)
        try:
            moved = homing.hand_over(self.cfg.durability.handover_timeout_s / 2)
            log.info("replica %s handed %d streams over", self.replica_id, moved)
        except Exception:  # the store gone too: the beat timeout re-homes them
            log.warning("hand-over to the stream store failed", exc_info=True)


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
