"""The engine in its own thread: one owner, a command queue in, chunks and ends out.

    HTTP handlers (asyncio)                  engine thread (the only one touching Engine)
    ---------------------------              --------------------------------------------
    await loop.call(fn, ...)  --- queue -->  run queued commands between steps
                                             engine.step()  (seconds of compute, no GIL-free
                                             wait for handlers: they only await a Future)
    on_chunk / on_end (encoder thread) <---  chunks taken after each step, ends, metrics

`Engine.step` is synchronous and compute-heavy, and the Engine is not thread-safe: every read
or write of it (submit, cancel, set_text, status) runs on the engine thread as a command,
between two steps, so handlers see consistent snapshots and never block the event loop.
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

from qvg_serve.engine.engine import Chunk, Engine
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
        self._stop = False
        self._created: dict[int, float] = {}  # stream -> submit time (TTFF)
        self._last: dict[int, float] = {}  # stream -> time of its last chunk (inter-chunk)
        self._counters: dict[str, int] = {}
        self.encoder = ThreadPoolExecutor(1, thread_name_prefix="qvg-encode")
        self._thread = threading.Thread(target=self._run, name="qvg-engine", daemon=True)
        self._thread.start()

    # -- called from any thread -----------------------------------------------------------------

    def call(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Run `fn(*args)` on the engine thread between steps; its result in a Future."""
        fut: Future = Future()
        self._cmds.put((fn, args, fut))
        self._wake.set()
        return fut

    def stop(self) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join(timeout=30)
        self.encoder.shutdown(wait=True)

    # -- engine thread --------------------------------------------------------------------------

    def _run(self) -> None:
        self.update_gauges()
        while not self._stop:
            self._drain()
            if self.engine.busy():
                self._step()
            else:
                self._wake.wait(IDLE_WAIT_S)
                self._wake.clear()
        self._drain()

    def _drain(self) -> None:
        while True:
            try:
                fn, args, fut = self._cmds.get_nowait()
            except queue.Empty:
                return
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
            log.exception("engine step failed; cancelling live streams")
            for sid in list(self.engine.streams):
                self.end(sid, "failed: engine error")
            return
        self.metrics.observe_step(time.perf_counter() - t0, report.batch)
        now = time.monotonic()
        for sid in report.committed:
            for chunk in self.engine.take(sid):
                self._chunk_out(sid, chunk, now)
        for sid, reason in report.ended:
            self.end(sid, reason)
        self.update_gauges()

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

    def submitted(self, sid: int) -> None:
        self._created[sid] = time.monotonic()

    def end(self, sid: int, reason: str) -> bool:
        """Cancel `sid` if live (pages freed now), drop its tensor state, report its end."""
        cancelled = self.engine.cancel(sid)  # after a natural end: frees the tensor state
        self._created.pop(sid, None)
        self._last.pop(sid, None)
        self.encoder.submit(self._on_end, sid, reason)
        self.update_gauges()
        return cancelled

    def update_gauges(self) -> None:
        """Streams by state, KV pages/bytes by format and tier, ladder counters."""
        m, sched, alloc = self.metrics, self.engine.scheduler, self.engine.alloc
        states: dict[str, int] = {}
        for s in sched.streams.values():
            states[s.state.value] = states.get(s.state.value, 0) + 1
        for e in sched.ended.values():
            states[e.state] = states.get(e.state, 0) + 1
        m.set_streams(states)
        m.waiting.set(sched.n_waiting)
        st = alloc.stats()
        pages = {(fmt, tier): n for (tier, fmt), n in st.pages.items()}
        nbytes = {(fmt, tier): n for (tier, fmt), n in st.used_bytes.items()}
        m.set_kv(pages, nbytes)
        bf16 = alloc.layout.page_bytes["bf16"]
        for tier, total in st.total_bytes.items():
            m.kv_capacity_bytes.labels(tier=tier).set(total)
            held = sum(n for (t, _), n in st.pages.items() if t == tier)
            m.kv_bf16_equivalent_bytes.labels(tier=tier).set(held * bf16)
        used = sum(nbytes.values())
        gpu_total = max(1, st.total_bytes["gpu"])
        m.kv_usage.set((st.total_bytes["gpu"] - st.free_bytes["gpu"]) / gpu_total)
        held_all = sum(st.pages.values()) * bf16
        m.compression.set(held_all / used if used else 1.0)
        self._count_ladder(sched.counters)

    def _count_ladder(self, counters) -> None:
        for rung in RUNGS:  # the scheduler's counters are cumulative: export the increase
            delta = counters.get(rung, 0) - self._counters.get(rung, 0)
            if delta > 0:
                self.metrics.transition(rung, delta)
                if rung == "preempt":
                    self.metrics.preemptions.inc(delta)
            self._counters[rung] = counters.get(rung, 0)
