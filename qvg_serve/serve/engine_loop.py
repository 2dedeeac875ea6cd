"""The engine in its own thread: one owner, a command queue in, chunks and ends out.

    HTTP handlers (asyncio)                  engine thread (the only one touching Engine)
    ---------------------------              --------------------------------------------
    await loop.call(fn, ...)  --- queue -->  run queued commands between steps
                                             engine.step()  (seconds of compute, no GIL-free
                                             wait for handlers: they only await a Future)
    on_chunk / on_end (encoder thread) <---  chunks taken after each step, ends, metrics

`Engine.step` is synchronous and compute-heavy, and the Engine is not thread-safe: every read
or write of it (submit, cancel, set_text, snapshot) runs on the engine thread as a command,
between two steps, so handlers see consistent snapshots and never block the event loop.
Creates, DELETEs and status do not wait for the step in progress: the intake (intake.py)
answers them from what this thread publishes after every step and every drain of commands.
Chunks go to a one-thread encoder pool (JPEG encoding off the step path, in submission order,
so a stream's chunks and its end arrive in order).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from qvg_serve.engine.engine import Engine
from qvg_serve.engine.report import Chunk, StepReport
from qvg_serve.serve.intake import Intake
from qvg_serve.serve.metrics import Metrics
from scheduler.config import RUNGS

log = logging.getLogger("qvg_serve.serve.engine_loop")

IDLE_WAIT_S = 0.5
"""How long an idle engine thread sleeps before rechecking (a command wakes it at once)."""


class EngineLoop:
    """Runs `engine.step()` in a dedicated thread while any stream is live."""

    def __init__(
        self,
        engine: Engine,
        metrics: Metrics,
        on_chunk: Callable[[int, Chunk], None],
        on_end: Callable[[int, str], None],
    ) -> None:
        self.engine, self.metrics = engine, metrics
        self._on_chunk, self._on_end = on_chunk, on_end
        self._cmds: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._created: dict[int, float] = {}  # stream -> submit time (TTFF)
        self._last: dict[int, float] = {}  # stream -> time of its last chunk (inter-chunk)
        self._counters: dict[str, int] = {}
        # tenant page leases (serve/quota.py): figures out after each step, leases in
        self.tenants: dict[str, tuple[int, int, int]] = {}  # capped tenant -> held, wanted, cap
        self.leases: tuple[int, dict[str, int]] = (0, {})  # applied: (seq, tenant -> pages)
        self._offered: tuple[int, dict[str, int]] | None = None
        self.encoder = ThreadPoolExecutor(1, thread_name_prefix="qvg-encode")
        self.intake = Intake(engine, self.call)
        self.intake.publish()  # before the thread starts: the engine is not shared yet
        self._thread = threading.Thread(target=self._run, name="qvg-engine", daemon=True)
        self._thread.start()

    # -- called from any thread -----------------------------------------------------------------

    def call(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Run `fn(*args)` on the engine thread between steps; its result in a Future."""
        fut: Future = Future()
        self._cmds.put((fn, args, fut))
        self._wake.set()
        return fut

    def stop(self, wait: bool = True) -> None:
        """Stop stepping after the current step; `wait` joins the thread and the encoder."""
        self._stopping.set()
        self._wake.set()
        if wait:
            self._thread.join(timeout=30)
        self.encoder.shutdown(wait=wait)

    def offer_leases(self, seq: int, leases: dict[str, int]) -> None:
        """New tenant page leases (the heartbeat thread): applied before the next step, in
        order (a later `seq` replaces one not yet applied)."""
        self._offered = (seq, leases)
        self._wake.set()

    def alive(self) -> bool:
        """Whether the engine thread runs (Serve's health check restarts a replica if not)."""
        return self._thread.is_alive()

    # -- engine thread --------------------------------------------------------------------------

    def _run(self) -> None:
        self.update_gauges()
        while not self._stopping.is_set():
            self._apply_leases()
            if self._drain():
                self.intake.publish()
            if self.engine.busy():
                self._step()
            else:
                self._wake.wait(IDLE_WAIT_S)
                self._wake.clear()
        self._drain()

    def _apply_leases(self) -> None:
        got = self._offered
        if got is not None and got[0] > self.leases[0]:
            self.engine.set_page_leases(got[1])
            self.leases = got

    def _drain(self) -> int:
        """Run the queued commands; how many ran."""
        ran = 0
        while True:
            try:
                fn, args, fut = self._cmds.get_nowait()
            except queue.Empty:
                return ran
            ran += 1
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn(*args))
                except Exception as exc:  # handed to the caller, who answers the request
                    fut.set_exception(exc)

    def _step(self) -> None:
        t0 = time.perf_counter()
        try:
            report = self.engine.step()
        except Exception:  # a bug: fail the live streams rather than spin on it
            log.exception("engine step failed; ending every live stream")
            self._fail_all()
            return
        self.metrics.observe_step(time.perf_counter() - t0, report.batch)
        self.intake.publish(report.ended)  # before the ends go out: their reports read it
        self._deliver(report)
        self.update_gauges()

    def _deliver(self, report: StepReport) -> None:
        now = time.monotonic()
        for sid, chunk in report.chunks:
            self._chunk_out(sid, chunk, now)
        for sid, reason in report.ended:
            self._ended(sid, reason)

    def _fail_all(self) -> None:
        """After a failed step: cancel every live stream; the next step reports their ends
        (if that step fails too, they are reported here so no client waits forever)."""
        for sid in self.engine.live_streams():
            self.engine.cancel(sid, "failed: engine error")
        try:
            report = self.engine.step()
            self.intake.publish(report.ended)
            self._deliver(report)
        except Exception:
            log.exception("engine step after the failure failed too")
            for sid in self.engine.drop_all():
                self._ended(sid, "failed: engine error")
            self.intake.publish()

    def _chunk_out(self, sid: int, chunk: Chunk, now: float) -> None:
        prev = self._last.get(sid)
        if prev is None:
            self.metrics.ttff.observe(now - self._created.get(sid, now))
        else:
            self.metrics.inter_chunk.observe(now - prev)
        self._last[sid] = now
        self.metrics.frames.inc(chunk.frames.shape[0])
        self.encoder.submit(self._on_chunk, sid, chunk)

    # -- commands (engine thread) ---------------------------------------------------------------

    def submitted(self, sid: int) -> None:  # any thread: TTFF counts from here
        self._created[sid] = time.monotonic()

    def refused(self, sid: int, reason: str) -> None:
        """An admitted stream the engine refused after all (intake.py): its end, reported."""
        self._ended(sid, reason)

    def _ended(self, sid: int, reason: str) -> None:
        """The engine reported `sid`'s end (it released the stream): tell the replica."""
        self.intake.forget(sid)
        self._created.pop(sid, None)
        self._last.pop(sid, None)
        self.encoder.submit(self._on_end, sid, reason)

    def update_gauges(self) -> None:
        """Streams by state, KV pages/bytes by format and tier, ladder counters."""
        m, kv = self.metrics, self.engine.kv_stats()
        self.tenants = kv.tenants
        m.set_streams(kv.streams)
        m.waiting.set(kv.waiting)
        m.set_kv(kv.pages, kv.used_bytes)
        for tier, total in kv.total_bytes.items():
            m.kv_capacity_bytes.labels(tier=tier).set(total)
            held = sum(n for (_, t), n in kv.pages.items() if t == tier)
            m.kv_bf16_equivalent_bytes.labels(tier=tier).set(held * kv.bf16_page_bytes)
        used = sum(kv.used_bytes.values())
        gpu_total = max(1, kv.total_bytes["gpu"])
        m.kv_usage.set((kv.total_bytes["gpu"] - kv.free_bytes["gpu"]) / gpu_total)
        held_all = sum(kv.pages.values()) * kv.bf16_page_bytes
        m.compression.set(held_all / used if used else 1.0)
        self._count_ladder(kv.ladder)

    def _count_ladder(self, counters) -> None:
        for rung in RUNGS:  # the scheduler's counters are cumulative: export the increase
            delta = counters.get(rung, 0) - self._counters.get(rung, 0)
            if delta > 0:
                self.metrics.transition(rung, delta)
                if rung == "preempt":
                    self.metrics.preemptions.inc(delta)
            self._counters[rung] = counters.get(rung, 0)
