"""The streams' durable state, off the engine replicas: one detached Ray actor per app.

    engine replica (encoder thread) --commit(chunk: latents, JPEGs)--> StreamStore (head node)
    engine replica (heartbeat thread) <--adopt / revoke-- heartbeat(replica, live streams)
    ingress: route(id) -> home replica; frames(id, start) -> the chunks' JPEG ObjectRefs

Per stream it keeps what a replica needs to continue it and a client needs to read it: tenant,
prompt (and every later prompt, with the chunk it applied from), seed, frames requested,
priority, and per committed chunk two objects it `ray.put` itself (so the store, not the
replica that produced them, owns them and they outlive that replica): the clean latents and
the JPEG frames. An ended stream keeps its frames `retention_s`, then every object is released.
Its latents go at its end (only a live stream is ever continued); its frames stay in the object
store while ended streams' frames fit `durability.frames_ram_mib`, and beyond it the oldest
move to local disk (spool.py) and are read from there, until `frames_disk_gib` deletes the
oldest (their ids answer 410). Live streams' frames are never moved.

Routing after the birth replica is gone. A public id "<birth replica>-<n>" stays the stream's
name for life; the store maps it to its current `home` replica (and that replica's engine id),
and the ingress asks the store before every per-stream call. Replicas heartbeat every
`heartbeat_s`; one silent for `dead_after_s` (killed, node lost) or handing over (drain) has
its live streams marked `recovering` and assigned to the live replica holding fewest streams,
which learns it from its next heartbeat, rebuilds the KV from the latents and continues. The
new home is set at assignment, so the old one is fenced: its late commits are dropped and its
heartbeat is told to drop the stream (a replica that was only slow cannot double-produce).

An end never overtakes the commits it counts. The store is an async actor, so Ray runs one
caller's calls in no guaranteed order: the home's `end` (small) can run before the `commit` of
its last chunk (latents and JPEGs). An end naming more frames than have landed is held
(`ending`) until they land; a commit after a settled end is refused, so without this the last
chunk was lost and readers waited for frames that never came. If the home dies meanwhile, a
completed stream is re-homed as usual (its new home makes the lost chunks) and any other end
settles on what landed; a live home's held end settles on what landed after `dead_after_s`
(no reader waits forever).

The store's own state lives in its memory: losing the head node (or this actor) loses every
stream's durable state; replicas then answer for new streams only (see docs/serving.md).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import ray

from qvg_serve.serve.frame_keeper import FrameKeeper
from qvg_serve.serve.quota import Leases
from qvg_serve.serve.spool import SpoolConfig, default_root
from qvg_serve.serve.stream_record import Durable

NAMESPACE = "qvg-serve"


def store_name(app: str) -> str:
    return f"qvg-stream-store:{app}"


class StreamStore:
    """The actor (async: every method is a short critical section; `frames` long-polls)."""

    def __init__(
        self,
        heartbeat_s: float,
        dead_after_s: float,
        retention_s: float,
        spool: SpoolConfig | None = None,
    ) -> None:
        self.dead_after_s, self.retention_s = dead_after_s, retention_s
        self.streams: dict[str, Durable] = {}
        cfg = spool or SpoolConfig(default_root("local"), 2 << 30, 8 << 30)
        self.kept = FrameKeeper(self.streams, cfg)  # ended streams' frames under the caps
        self.beats: dict[str, float] = {}  # replica -> last heartbeat (monotonic)
        self.leaving: set[str] = set()  # replicas that handed their streams over
        self.leases = Leases()  # capped tenants' pages per replica (cluster-wide caps)
        self.early: dict[str, list[tuple]] = {}  # commits that overtook their register
        self.released = 0

    async def configure(self, dead_after_s: float, retention_s: float, spool) -> None:
        """The deploy's durability settings; frames_dir stays the one the store started with."""
        self.dead_after_s, self.retention_s = dead_after_s, retention_s
        if spool is not None:
            self.kept.set_caps(spool)

    # -- writes from the home replica -----------------------------------------------------------

    def register(self, pid: str, meta: dict[str, Any], home: str, engine_id: int) -> None:
        rec = Durable(meta, home, engine_id)
        self.streams[pid] = rec
        for args in self.early.pop(pid, []):
            self.commit(pid, *args)

    def commit(self, pid: str, home: str, chunk: int, latents, jpegs: list[bytes]) -> bool:
        """Chunk `chunk` of `pid`, once (a repeat or a fenced old home is ignored)."""
        rec = self.streams.get(pid)
        if rec is None:
            self.early.setdefault(pid, []).append((home, chunk, latents, jpegs))
            return False
        if rec.home != home or chunk in rec.jpegs or rec.ended is not None:
            return False
        rec.latents[chunk], rec.jpegs[chunk] = ray.put(latents), ray.put(jpegs)
        rec.nbytes += latents.nbytes + sum(len(j) for j in jpegs)
        rec.latent_bytes += latents.nbytes
        rec.frames_done = min(rec.meta["frames"], rec.chunks_done() * rec.meta["fpc"])
        if rec.ending is not None and rec.frames_done >= rec.ending[1]:
            self._end(pid, rec, *rec.ending[:3])  # the commits the end counted have all landed
        rec.notify()
        return True

    def act(self, pid: str, home: str, chunk: int, prompt: str) -> None:
        rec = self.streams.get(pid)
        if rec is not None and rec.home == home:
            rec.actions.append((chunk, prompt))

    async def end(self, pid: str, home: str, reason: str, frames: int, final: dict | None):
        rec = self.streams.get(pid)
        if rec is None or rec.home != home or rec.ended is not None:
            return
        if rec.frames_done < frames:  # it overtook commits of its own home: wait for them
            rec.ending = (reason, frames, final, time.monotonic())
            return
        self._end(pid, rec, reason, frames, final)

    def _end(self, pid: str, rec: Durable, reason: str, frames: int, final: dict | None) -> None:
        """(On the event loop: async callers.) Its latents go, its frames join the budget."""
        rec.ended, rec.ended_at, rec.total, rec.final = reason, time.monotonic(), frames, final
        rec.recovering_since = rec.ending = None
        rec.latents.clear()
        rec.nbytes, rec.latent_bytes = rec.nbytes - rec.latent_bytes, 0
        self.kept.ended(pid, rec)
        rec.notify()

    # -- reads by the ingress -------------------------------------------------------------------

    def route(self, pid: str, tenant: str) -> dict[str, Any] | None:
        """Where `pid` lives and what the store knows of it; None if unknown or not `tenant`'s."""
        self._sweep()
        rec = self.streams.get(pid)
        if rec is None or rec.meta["tenant"] != tenant:
            why = self.kept.gone_why(pid, tenant)
            return None if why is None else {"state": "gone", "detail": why}
        return {
            "state": rec.state(),
            "home": rec.home,
            "engine_id": rec.engine_id,
            "prompt": rec.prompt(),
            "frames_done": rec.frames_done,
            "frames_wanted": rec.meta["frames"],
            "chunks_done": rec.chunks_done(),
            "end_reason": rec.ended,
            "final": rec.final,
        }

    async def frames(self, pid: str, tenant: str, start: int, wait_s: float) -> dict | None:
        """JPEG refs of the committed chunks holding frames >= `start`; waits up to `wait_s`
        for one if there is none yet and the stream is live."""
        rec = self.streams.get(pid)
        if rec is None or rec.meta["tenant"] != tenant:
            return None
        complete = rec.ended is not None and rec.frames_done >= (rec.total or 0)
        if start >= rec.frames_done and not complete:
            waiter = rec.changed
            try:
                await asyncio.wait_for(waiter.wait(), wait_s)
            except TimeoutError:
                pass
        fpc, done = rec.meta["fpc"], rec.chunks_done()
        if rec.on_disk is not None:  # JPEG bytes inline (the disk is this node's)
            chunks = await self.kept.read(pid, start)
            if chunks is None:  # deleted for the disk cap meanwhile
                return None
        else:  # ObjectRefs: the reader fetches them from the object store
            chunks = [(k, k * fpc, rec.jpegs[k]) for k in range(start // fpc, done)]
        return {
            "chunks": chunks,
            "frames_done": rec.frames_done,
            "total": rec.total,
            "state": rec.state(),
            "end_reason": rec.ended,
        }

    def list(self, *, tenant: str, limit: int) -> dict[str, Any]:
        """`tenant`'s streams, newest first (the web page's listing), and the live replicas."""
        self._sweep()
        mine = [(p, r) for p, r in self.streams.items() if r.meta["tenant"] == tenant]
        mine.sort(key=lambda pr: pr[1].meta["created"], reverse=True)
        listed = [
            {
                "id": p,
                "prompt": r.prompt(),
                "frames_done": r.frames_done,
                "frames_wanted": r.meta["frames"],
                "created": r.meta["created"],
                "end_reason": r.ended,
            }  # fmt: skip
            for p, r in mine[:limit]
        ]
        return {"streams": listed, "replicas": sorted(self.beats)}

    async def video(self, pid: str, tenant: str) -> ray.ObjectRef | bytes | None:
        """video.mp4 once built: a ref in the object store, or bytes read from disk."""
        rec = self.streams.get(pid)
        if rec is None or rec.meta["tenant"] != tenant:
            return None
        return rec.video if rec.on_disk is None else await self.kept.video(pid)

    async def put_video(self, pid: str, mp4: bytes) -> None:
        rec = self.streams.get(pid)
        if rec is not None and rec.ended is not None:
            await self.kept.put_video(pid, rec, mp4)

    async def cancel(self, pid: str, tenant: str) -> bool:
        """End a stream that has no home right now (re-homing); True if it was recovering."""
        rec = self.streams.get(pid)
        if rec is None or rec.meta["tenant"] != tenant or rec.recovering_since is None:
            return False
        self._end(pid, rec, "cancelled", rec.frames_done, None)
        return True

    # -- replica liveness and re-homing ---------------------------------------------------------

    def heartbeat(self, replica: str, holding: list[str], quota: dict | None = None) -> dict:
        """A live replica's beat with the streams it runs: those it must adopt, those it
        must drop (re-homed while it was silent, or ended by a cancel while re-homing), and
        its capped tenants' page leases for what it reports of them (`quota`: quota.py)."""
        if replica not in self.leaving:
            self.beats[replica] = time.monotonic()
        self._sweep()
        adopt = [
            pid
            for pid, rec in self.streams.items()
            if rec.ended is None and rec.home == replica and rec.recovering_since is not None
        ]
        revoke = [p for p in holding if p not in self.streams or self._not_home(p, replica)]
        leases = self.leases.beat(replica, quota or {})
        return {"adopt": adopt, "revoke": revoke, "frames": self.kept.frame_bytes(),
                "leases": leases}  # fmt: skip

    def quota(self) -> dict[str, dict]:
        """Capped tenants' pages and leases over the replicas (quota.py; tests, benches)."""
        return self.leases.stats()

    def _not_home(self, pid: str, replica: str) -> bool:
        rec = self.streams[pid]
        return rec.home != replica or rec.ended is not None

    def resume_info(self, pid: str, replica: str) -> dict[str, Any] | None:
        """What `replica` needs to continue `pid` (None if it is no longer assigned there)."""
        rec = self.streams.get(pid)
        if rec is None or rec.home != replica or rec.ended is not None:
            return None
        done = rec.chunks_done()
        return {
            **rec.meta,
            "prompt": rec.prompt(),
            "chunks_done": done,
            "latents": [rec.latents[k] for k in range(done)],
            "frames_done": rec.frames_done,
        }

    def adopted(self, pid: str, replica: str, engine_id: int) -> bool:
        rec = self.streams.get(pid)
        if rec is None or rec.home != replica or rec.ended is not None:
            return False
        rec.engine_id, rec.recovering_since = engine_id, None
        rec.notify()
        return True

    def hand_over(self, replica: str) -> int:
        """`replica` is stopping (drain): re-home its live streams now; how many."""
        self.leaving.add(replica)
        self.beats.pop(replica, None)
        self.leases.forget(replica)
        return self._rehome(replica)

    def suspect(self, replica: str) -> None:
        """A caller saw `replica` die (ActorDiedError): do not wait for the beat timeout."""
        if replica in self.beats:
            self.beats[replica] = 0.0
        self._sweep()

    def _sweep(self) -> None:
        now = time.monotonic()
        for replica, beat in list(self.beats.items()):
            if now - beat > self.dead_after_s:
                del self.beats[replica]
                self.leases.forget(replica)
                self._rehome(replica)
        self._assign_orphans()
        self._settle(now)
        self._release(now)

    def _settle(self, now: float) -> None:
        """An end held longer than `dead_after_s` for a live home's commits settles on the
        frames that landed (a commit lost on the way would otherwise hold it forever)."""
        for pid, rec in list(self.streams.items()):
            held = rec.ending
            if held is not None and rec.home in self.beats and now - held[3] > self.dead_after_s:
                self._end(pid, rec, held[0], rec.frames_done, held[2])

    def _rehome(self, replica: str) -> int:
        n = 0
        for pid, rec in list(self.streams.items()):
            if rec.ended is not None or rec.home != replica:
                continue
            held = rec.ending
            if held is not None and held[0] != "completed":  # cancelled, closed, failed
                self._end(pid, rec, held[0], rec.frames_done, held[2])  # no new home revives it
                continue
            rec.recovering_since = rec.recovering_since or time.monotonic()
            rec.home = ""  # fenced: the old home's late writes are dropped
            rec.ending = None  # a completed one: its new home makes the lost chunks
            n += 1
            rec.notify()
        self._assign_orphans()
        return n

    def _assign_orphans(self) -> None:
        live = [r for r in self.beats if r not in self.leaving]
        if not live:
            return
        load = {r: 0 for r in live}
        for rec in self.streams.values():
            if rec.ended is None and rec.home in load:
                load[rec.home] += 1
        for rec in self.streams.values():
            if rec.ended is None and rec.home == "":
                rec.home = min(live, key=lambda r: load[r])
                load[rec.home] += 1

    def _release(self, now: float) -> None:
        """Free ended streams past their retention (their objects go with the last ref)."""
        for pid in [p for p, r in self.streams.items() if r.ended is not None]:
            if now - self.streams[pid].ended_at >= self.retention_s:
                del self.streams[pid]
                self.kept.released(pid)
                self.released += 1

    def load(self) -> dict[str, int]:
        """Live streams per home replica (`bench chaos` kills the busiest)."""
        out: dict[str, int] = {}
        for rec in self.streams.values():
            if rec.ended is None and rec.home:
                out[rec.home] = out.get(rec.home, 0) + 1
        return out

    def stats(self) -> dict[str, int]:
        """Streams held and the objects and bytes they keep in the object store."""
        self._sweep()
        recs = self.streams.values()
        return {
            "streams": len(self.streams),
            "live": sum(1 for r in recs if r.ended is None),
            "recovering": sum(1 for r in recs if r.recovering_since is not None),
            "objects": sum(len(r.latents) + len(r.jpegs) + (r.video is not None) for r in recs),
            "bytes": sum(r.nbytes for r in recs),
            **self.kept.stats(),
            "released": self.released,
            "replicas": len(self.beats),
        }


def get_store(app: str, heartbeat_s=0.5, dead_after_s=5.0, retention_s=600.0, spool=None):
    """The app's store actor: created on first use (head node, detached, restarted by Ray if
    its process dies, with empty state), found by name afterwards; either way given these
    settings (a redeploy's reach a store the first deploy made)."""
    store = (
        ray.remote(StreamStore)
        .options(
            name=store_name(app),
            namespace=NAMESPACE,
            get_if_exists=True,
            lifetime="detached",
            num_cpus=0,
            resources={"node:__internal_head__": 0.001},
            scheduling_strategy="DEFAULT",  # not inside a replica's placement group
            max_restarts=-1,
            max_concurrency=1000,
        )
        .remote(heartbeat_s, dead_after_s, retention_s, spool)
    )
    store.configure.remote(dead_after_s, retention_s, spool)
    return store
