"""Create, DELETE and status answered without waiting for the engine's step in progress.

The Engine is not thread-safe: every read or write of it runs on the engine thread between two
steps (engine_loop.py), and one step can take seconds on a loaded host. A control call that
queued behind it would wait up to a whole step. The intake answers the frequent ones from what
the engine thread publishes after every step and every batch of commands:

    HTTP handler (any thread)                        engine thread
    ---------------------------------------------    ------------------------------------------
    admit: scheduler.admission(spec, the published   publish: the scheduler's IntakeView, and a
      view + the creates admitted since) -> an id      snapshot of every live stream (and of the
      now; `submit` queues the engine's submit         last KEEP_FINAL ended ones)
      (`reserved`: only a config change since can    the queued submit, then any queued cancel,
      reject it then; the stream's end says so)       at the next drain, before the next step
    cancel: a stream still queued here, or live
      and not at the commit of its last chunk ->
      cancelled: true now, the cancel queued
    snapshot: the published one (None: ask the
      engine thread, e.g. a cancel is queued)

A status answer is as of the last step or drain: at most one step old. A DELETE answered here
ends the stream before its next step, as a DELETE that waited would: the step in progress may
still commit its chunk either way (a client may get that chunk after the answer). Its pages are
free before any later engine call runs (commands run in order), so `pages_held` is 0 as before,
and a status of the stream asks the engine thread until its end is reported. A stream that may
finish in the step in progress (the commit of its last chunk is its next pass) is cancelled on
the engine thread, so `cancelled` never says true of a stream that completed. (One that fails in
the step in progress, under memory pressure, still reads cancelled: true; its end says failed.)
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch

from qvg_serve.engine.engine import Engine
from qvg_serve.engine.report import CancelResult
from scheduler.lifecycle import IntakeView, admission
from scheduler.output import Admission

log = logging.getLogger("qvg_serve.serve.intake")

KEEP_FINAL = 1024
"""Snapshots of ended streams kept published (the end report reads one, a moment later)."""


@dataclass(frozen=True)
class Published:
    """One consistent picture from the engine thread (replaced whole, never mutated)."""

    view: IntakeView
    executed: int  # intake submits the engine had run when `view` was taken
    snapshots: Mapping[int, dict]  # stream -> Engine.snapshot
    finishing: frozenset[int]  # streams whose next pass may be their last


class Intake:
    """Admission, cancels and snapshots for the handlers of one engine replica."""

    def __init__(self, engine: Engine, call: Callable[..., Any]) -> None:
        self.engine, self._call = engine, call  # call: EngineLoop.call (runs on its thread)
        self._lock = threading.Lock()
        self._admitted = 0  # creates admitted here (handler threads, under the lock)
        self._executed = 0  # of them, submitted to the engine (engine thread, under the lock)
        self._queued: set[int] = set()  # admitted, the engine's submit not run yet
        self._cancelling: set[int] = set()  # cancel queued here, its end not reported yet
        self._final: OrderedDict[int, dict] = OrderedDict()  # engine thread only
        self.published: Published | None = None

    # -- handler threads --------------------------------------------------------------------------

    def admit(
        self,
        text: torch.Tensor,
        *,
        chunks: int | None,
        tenant: str,
        priority: int,
        target_fps: float | None,
    ) -> tuple[int, Admission]:
        """(stream id, admission) by the scheduler's rule on the published view; raises
        ValueError for text of the wrong shape. An admitted stream must be `submit`ted."""
        self.engine.check_text(text)
        spec = self.engine.stream_spec(0, chunks, tenant, priority, target_fps)
        with self._lock:
            pub = self.published
            assert pub is not None, "EngineLoop publishes before its thread starts"
            waiting = pub.view.waiting + self._admitted - pub.executed
            adm = admission(spec, replace(pub.view, waiting=waiting))
            if not adm.accepted:
                self._call(self.engine.count_rejection, adm.reason)  # counted as submit would
                return 0, adm
            sid = self.engine.new_stream_id()
            self._admitted += 1
            self._queued.add(sid)
        return sid, adm

    def submit(
        self, sid: int, text: torch.Tensor, on_refused: Callable[[int, str], None], **kw: Any
    ) -> None:
        """Queue the engine's submit of admitted stream `sid` (kw: Engine.submit's). If the
        engine refuses it after all (a reconfigure since, or an error), `on_refused(sid,
        reason)` runs on the engine thread: the caller reports the stream's end."""

        def run() -> None:
            reason = None
            try:
                _, adm = self.engine.submit(text, stream_id=sid, reserved=True, **kw)
                reason = None if adm.accepted else f"rejected: {adm.reason}"
            except Exception as exc:  # e.g. a bug: the client must hear of it
                log.exception("submit of admitted stream %d failed", sid)
                reason = f"failed: {type(exc).__name__}: {exc}"[:200]
            finally:
                with self._lock:
                    self._queued.discard(sid)
                    self._executed += 1
            if reason is not None:
                on_refused(sid, reason)

        self._call(run)

    def cancel(self, sid: int) -> CancelResult | None:
        """Queue a cancel and answer now if the answer cannot change before it runs; None:
        ask the engine thread."""
        with self._lock:
            if sid in self._cancelling:
                return None  # a second DELETE: the engine knows whether it still ran
            if sid not in self._queued:  # (queued: its submit runs first, in the same drain)
                pub = self.published
                snap = pub.snapshots.get(sid) if pub is not None else None
                if snap is None or snap["end_reason"] is not None or sid in pub.finishing:
                    return None  # ended, or it may finish in the step in progress
            self._cancelling.add(sid)
        self._call(self._cancel, sid)
        return CancelResult(True, 0)  # freed before any later engine call or step runs

    def snapshot(self, sid: int) -> dict | None:
        """The stream's published snapshot; None if the engine thread must be asked."""
        pub = self.published
        if pub is None or sid in self._cancelling or sid in self._queued:
            return None
        return pub.snapshots.get(sid)

    # -- engine thread ----------------------------------------------------------------------------

    def _cancel(self, sid: int) -> None:
        try:
            if not self.engine.cancel(sid).live:  # ended meanwhile (moved, failed)
                log.info("stream %d ended before its queued cancel ran", sid)
        except Exception:  # nobody awaits this command: say it here
            log.exception("queued cancel of stream %d failed", sid)

    def publish(self, ended: tuple[tuple[int, str], ...] = ()) -> None:
        """After a step (`ended`: the streams it ended) or a drain of commands."""
        eng = self.engine
        for sid, _ in ended:
            self._final[sid] = eng.snapshot(sid)
            self._final.move_to_end(sid)
        while len(self._final) > KEEP_FINAL:
            self._final.popitem(last=False)
        snaps = {**self._final, **{sid: eng.snapshot(sid) for sid in eng.live_streams()}}
        view = eng.intake_view()
        with self._lock:
            self.published = Published(view, self._executed, snaps, eng.may_finish_next())

    def forget(self, sid: int) -> None:
        """The stream's end was reported (engine thread)."""
        with self._lock:
            self._cancelling.discard(sid)
