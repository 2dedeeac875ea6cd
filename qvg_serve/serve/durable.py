"""The replica's side of the stream store (store.py): write commits, beat, adopt, hand over.

    encoder thread:   chunk -> JPEGs -> store.commit(id, chunk, latents, JPEGs)   (async call)
                      end   -> engine snapshot -> store.end(id, reason, frames, snapshot)
    heartbeat thread: every heartbeat_s: store.heartbeat(replica, ids held, tenant pages)
                      -> leases: capped tenants' pages allowed here (quota.py)
                      -> adopt: queued for the adopter thread
                      -> revoke: cancel here (the stream moved; its end is not reported)
                      -> frames: the store's frame bytes by tier (on_frames: the metrics)
    adopter thread:   resume_info -> latents -> engine.submit(resume=...) -> adopted
    __del__ (drain):  stop stepping, flush the commits in flight, store.hand_over(replica)

Nothing here runs on the engine thread or the event loop: commits are fire-and-forget calls
(the step never waits on the store). Adoption waits on the engine thread (a step can take
seconds on a loaded host), so it has a thread of its own: the beats never wait for it, or a
replica adopting many streams would miss beats, be taken for dead and lose them again.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

import ray
import torch

from qvg_serve.engine.engine import Engine
from qvg_serve.engine.report import Chunk, ResumeState
from qvg_serve.serve.engine_loop import EngineLoop
from qvg_serve.serve.frames import encode_jpegs

log = logging.getLogger("qvg_serve.serve.durable")

MOVED = "moved"
"""End reason of a stream cancelled here because another replica now runs it."""
CALL_TIMEOUT_S = 30.0


@dataclass
class Local:
    """A stream this replica runs: its public id, engine id and how many frames it sent."""

    pid: str
    sid: int
    tenant: str
    frames: int
    sent: int = 0
    moved: bool = False
    known: bool = True  # the store has its record (a new one: once its register landed)


class Homing:
    """Keeps this replica's streams durable in the store and takes over others' streams."""

    def __init__(
        self,
        replica: str,
        store,
        engine: Engine,
        loop: EngineLoop,
        encode_text: Callable[[str], torch.Tensor],
        heartbeat_s: float,
        on_frames: Callable[[dict[str, int]], None] | None = None,
    ) -> None:
        self.replica, self.store, self.engine, self.loop = replica, store, engine, loop
        self.encode_text, self.heartbeat_s = encode_text, heartbeat_s
        self.on_frames = on_frames
        self.video_fpc = engine.facts.frames_per_chunk
        self.by_pid: dict[str, Local] = {}
        self.by_sid: dict[int, Local] = {}
        self._lock = threading.Lock()
        self._inflight: list[ray.ObjectRef] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="qvg-heartbeat", daemon=True)
        self._to_adopt: queue.Queue[str] = queue.Queue()
        self._queued: set[str] = set()  # adoptions asked for and not yet tried
        self._adopter = threading.Thread(target=self._adopt_loop, name="qvg-adopt", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._adopter.start()

    # -- bookkeeping (any thread) ----------------------------------------------------------------

    def track(self, loc: Local) -> None:
        with self._lock:
            self.by_pid[loc.pid], self.by_sid[loc.sid] = loc, loc

    def local(self, pid: str, tenant: str) -> Local | None:
        loc = self.by_pid.get(pid)
        return loc if loc is not None and loc.tenant == tenant and not loc.moved else None

    def register(self, loc: Local, meta: dict) -> ray.ObjectRef:
        """A new stream (before the engine's submit of it is queued: a chunk of it always
        finds it tracked)."""
        self.track(loc)
        meta = {**meta, "fpc": self.video_fpc}
        return self.store.register.remote(loc.pid, meta, self.replica, loc.sid)

    # -- encoder thread --------------------------------------------------------------------------

    def on_chunk(self, sid: int, chunk: Chunk) -> None:
        loc = self.by_sid.get(sid)
        if loc is None or loc.moved:
            return
        room = loc.frames - chunk.index * self.video_fpc  # the last chunk may overshoot: trim
        jpegs = encode_jpegs(chunk.frames[: max(0, room)])
        loc.sent = chunk.index * self.video_fpc + len(jpegs)
        ref = self.store.commit.remote(
            loc.pid, self.replica, chunk.index, chunk.latents.numpy(), jpegs
        )
        self._inflight = [r for r in self._inflight[-64:] if not _done(r)] + [ref]

    def on_end(self, sid: int, reason: str) -> None:
        with self._lock:
            loc = self.by_sid.pop(sid, None)
            if loc is not None and self.by_pid.get(loc.pid) is loc:
                del self.by_pid[loc.pid]
        if loc is None or loc.moved or reason == MOVED:
            return
        snap = self.loop.intake.snapshot(sid)  # published with the end, most often
        try:
            if snap is None:
                snap = self.loop.call(self.engine.snapshot, sid).result(timeout=5)
        except Exception:  # stopping: the store keeps what it has
            snap = None
        self.store.end.remote(loc.pid, self.replica, reason, loc.sent, snap)

    # -- heartbeat thread ------------------------------------------------------------------------

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self.beat_once()
            except Exception:  # the store restarting, a slow call: beat again
                log.warning("heartbeat to the stream store failed", exc_info=True)

    def beat_once(self) -> None:
        """One beat: what this replica holds out, leases, revokes and adoptions in."""
        seq, leases = self.loop.leases
        quota = {"seq": seq, "leases": leases, "tenants": self.loop.tenants}
        # a stream whose register may not have landed yet is left out: the store would take
        # it for one it does not know and revoke it (the client holds its id: it must run)
        held = [pid for pid, loc in list(self.by_pid.items()) if loc.known]
        reply = ray.get(
            self.store.heartbeat.remote(self.replica, held, quota), timeout=CALL_TIMEOUT_S
        )
        self.loop.offer_leases(reply["leases"]["seq"], reply["leases"]["leases"])
        if self.on_frames is not None:
            self.on_frames(reply["frames"])
        for pid in reply["revoke"]:
            self._drop(pid)
        for pid in reply["adopt"]:
            if pid not in self.by_pid and pid not in self._queued:
                self._queued.add(pid)
                self._to_adopt.put(pid)

    def _adopt_loop(self) -> None:
        while not self._stop.is_set():
            try:
                pid = self._to_adopt.get(timeout=self.heartbeat_s)
            except queue.Empty:
                continue
            try:
                if not self._stop.is_set():
                    self._adopt(pid)
            except Exception:  # a slow engine or store: the next beat asks again
                log.warning("adopting %s failed; retrying", pid, exc_info=True)
            finally:
                self._queued.discard(pid)

    def _drop(self, pid: str) -> None:
        loc = self.by_pid.get(pid)
        if loc is not None and not loc.moved:
            loc.moved = True
            self.loop.call(self.engine.cancel, loc.sid, MOVED)

    def _adopt(self, pid: str) -> None:
        info = ray.get(self.store.resume_info.remote(pid, self.replica), timeout=CALL_TIMEOUT_S)
        if info is None:
            return
        chunks, done = math.ceil(info["frames"] / self.video_fpc), info["chunks_done"]
        if done >= chunks:  # every chunk committed; only its end was lost with the old home
            if ray.get(self.store.adopted.remote(pid, self.replica, -1)):
                self.store.end.remote(pid, self.replica, "completed", info["frames_done"], None)
            return
        resume = None
        if done:
            parts = ray.get(info["latents"], timeout=CALL_TIMEOUT_S)
            resume = ResumeState(torch.cat([torch.tensor(p) for p in parts], 1), done)  # copies
        text = self.encode_text(info["prompt"])
        loc = Local(pid, -1, info["tenant"], info["frames"], info["frames_done"])

        def submit():  # engine thread: tracked and reported adopted in one go, even if
            sid, adm = self.engine.submit(  # the heartbeat thread stops waiting for it
                text, chunks=chunks, seed=info["seed"], tenant=info["tenant"],
                priority=info["priority"], target_fps=info["target_fps"], resume=resume,
            )  # fmt: skip
            if not adm.accepted:
                return adm, None
            loc.sid = sid
            self.track(loc)
            self.loop.submitted(sid)
            return adm, self.store.adopted.remote(pid, self.replica, sid)

        adm, ref = self.loop.call(submit).result(timeout=CALL_TIMEOUT_S)
        if ref is None:  # e.g. no KV room now: assigned here still, retried next beat
            log.warning("adopting %s refused (%s); retrying", pid, adm.reason)
            return
        if not ray.get(ref, timeout=CALL_TIMEOUT_S):
            self._drop(pid)  # cancelled or moved meanwhile
        log.info("adopted %s at chunk %d of %d", pid, done, chunks)

    # -- drain -----------------------------------------------------------------------------------

    def hand_over(self, timeout_s: float) -> int:
        """Stop beating, let in-flight commits land, hand every live stream to the store for
        re-homing (the engine loop must be stopped first: no new commits)."""
        self._stop.set()
        pending = [r for r in self._inflight if not _done(r)]
        if pending:
            ray.wait(pending, num_returns=len(pending), timeout=timeout_s)
        for loc in list(self.by_pid.values()):
            loc.moved = True
        return ray.get(self.store.hand_over.remote(self.replica), timeout=timeout_s)

    def stop(self) -> None:
        self._stop.set()


def _done(ref: ray.ObjectRef) -> bool:
    ready, _ = ray.wait([ref], timeout=0)
    return bool(ready)
