"""The stream store's ended streams' frames, held under two caps (store.py owns one).

    _end(id) --> ended(id): counted in RAM --> over frames_ram_mib: the spiller task moves the
    oldest ended streams' JPEGs (and MP4) from the object store to disk (spool.py), then drops
    their refs --> over frames_disk_gib: the oldest spilled streams are deleted (410, logged)

Every method runs on the store actor's event loop (the store's async methods call them);
file I/O goes to a worker thread so a write never stalls the store's other calls. A spill
awaits the object store and the disk, so each step re-checks that the stream was not released
(retention) meanwhile. Readers of a spilled stream get JPEG bytes inline, `READ_BYTES` at a
time (the disk belongs to the store's node). A moved or deleted stream's refs are held
`RETIRE_S` more, off the budget: an answer sent just before the move may carry them to a
reader that has not fetched them yet.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import OrderedDict, deque
from typing import TYPE_CHECKING

import ray

from qvg_serve.serve.spool import Part, Spool, SpoolConfig

if TYPE_CHECKING:
    from qvg_serve.serve.stream_record import Durable

log = logging.getLogger("qvg_serve.serve.store")

READ_BYTES = 8 << 20
"""Most JPEG bytes one `frames` answer carries from disk (the reader asks again for more)."""
RETIRE_S = 30.0
"""How long a moved or deleted stream's refs are still held: a `frames` answer sent just before
carries them to a reader that has not fetched them yet (a freed object can hang its get)."""
GONE_KEEP = 4096
"""How many ids deleted for a cap are remembered (answered 410 with the reason, not 404)."""


class FrameKeeper:
    """Ended streams' frames in RAM or on disk; `streams` is the store's table (shared)."""

    def __init__(self, streams: dict[str, Durable], cfg: SpoolConfig) -> None:
        self.streams = streams
        self.spool = Spool(cfg)
        self.gone: OrderedDict[str, tuple[str, str]] = OrderedDict()  # id -> (tenant, why)
        self._spiller: asyncio.Task | None = None
        self._retired: deque[tuple[float, list]] = deque()  # (drop after, refs)
        self.spilled = self.deleted = 0

    def set_caps(self, cfg: SpoolConfig) -> None:
        """New caps (a redeploy); the folder stays, its files are this store's."""
        self.spool.cfg = dataclasses.replace(cfg, root=self.spool.cfg.root)
        self._kick()

    # -- the store's hooks ----------------------------------------------------------------------

    def ended(self, pid: str, rec: Durable) -> None:
        self.spool.ended(pid, rec.nbytes)
        self._kick()
        self._drop_retired()

    def released(self, pid: str) -> None:
        self.spool.forget(pid)

    def gone_why(self, pid: str, tenant: str) -> str | None:
        tenant_why = self.gone.get(pid)
        return tenant_why[1] if tenant_why is not None and tenant_why[0] == tenant else None

    async def read(self, pid: str, start: int) -> list[Part] | None:
        try:
            return await asyncio.to_thread(self.spool.read, pid, start, READ_BYTES)
        except FileNotFoundError:
            return None

    async def video(self, pid: str) -> bytes | None:
        try:
            return await asyncio.to_thread(self.spool.video, pid)
        except OSError:  # deleted meanwhile
            return None

    async def put_video(self, pid: str, rec: Durable, mp4: bytes) -> None:
        """Keep the MP4 beside the stream's frames: a ref in RAM, or a file once spilled."""
        if rec.on_disk is None:
            if rec.video is None:  # two first readers both build it: keep one
                rec.video, rec.nbytes = ray.put(mp4), rec.nbytes + len(mp4)
                self.spool.grow(pid, len(mp4))
                self._kick()
            return
        room = self.spool.make_room(len(mp4))
        if room is None or pid in room:
            return  # it does not fit: built again per request
        for old in room:
            self._delete(old, "durability.frames_disk_gib was reached")
        try:
            await asyncio.to_thread(self.spool.put_video, pid, mp4)
        except OSError:  # deleted meanwhile
            return
        self.spool.grow(pid, len(mp4))

    def frame_bytes(self) -> dict[str, int]:
        """Bytes of ended streams' frames by tier (the replicas export them as metrics)."""
        self._drop_retired()  # every heartbeat
        return {"ram": self.spool.ram_bytes, "disk": self.spool.disk_bytes}

    def stats(self) -> dict[str, int]:
        return {
            "ram_ended_bytes": self.spool.ram_bytes,
            "disk_bytes": self.spool.disk_bytes,
            "on_disk": len(self.spool.disk),
            "spilled": self.spilled,
            "deleted": self.deleted,
        }

    # -- the spiller ----------------------------------------------------------------------------

    def _kick(self) -> None:
        """Start the spiller when RAM is over its cap and none runs."""
        if self.spool.to_spill() and (self._spiller is None or self._spiller.done()):
            self._spiller = asyncio.get_running_loop().create_task(self._spill_over())

    async def _spill_over(self) -> None:
        while victims := self.spool.to_spill():
            for pid in victims:
                try:
                    await self._spill(pid)
                except Exception:  # never leave it counted: this loop would not end
                    log.exception("writing %s's frames to disk failed; deleting them", pid)
                    self._delete(pid, "its frames could not be written to disk")

    async def _spill(self, pid: str) -> None:
        """Move ended `pid`'s JPEGs (and MP4) from the object store to disk."""
        rec = self.streams.get(pid)
        if rec is None or rec.on_disk is not None:
            self.spool.forget(pid)
            return
        done = rec.chunks_done()
        jpegs = await asyncio.gather(*(rec.jpegs[k] for k in range(done)))
        video = await rec.video if rec.video is not None else None
        if self.streams.get(pid) is not rec:  # released meanwhile
            return
        size = sum(len(j) for part in jpegs for j in part) + len(video or b"")
        room = self.spool.make_room(size)
        if room is None:
            self._delete(pid, f"its {size} bytes of frames exceed durability.frames_disk_gib")
            return
        for old in room:
            self._delete(old, "durability.frames_disk_gib was reached")
        fpc = rec.meta["fpc"]
        parts = [(k, k * fpc, list(jpegs[k])) for k in range(done)]
        written = await asyncio.to_thread(self.spool.write, pid, parts, video)
        self.spool.moved(pid, written)
        if self.streams.get(pid) is not rec:  # released while writing: drop the files too
            self.spool.forget(pid)
            return
        self._retire(rec)
        rec.on_disk = done
        self.spilled += 1

    def _retire(self, rec: Durable) -> None:
        """Take `rec`'s refs off it now and drop them RETIRE_S later."""
        refs = [*rec.jpegs.values(), *([rec.video] if rec.video is not None else [])]
        rec.jpegs, rec.video, rec.nbytes = {}, None, 0
        if refs:
            self._retired.append((time.monotonic() + RETIRE_S, refs))

    def _drop_retired(self) -> None:
        now = time.monotonic()
        while self._retired and self._retired[0][0] <= now:
            self._retired.popleft()

    def _delete(self, pid: str, why: str) -> None:
        """Drop ended `pid` before its retention (a cap): its id answers 410 saying why."""
        rec = self.streams.pop(pid, None)
        self.spool.forget(pid)
        if rec is None:
            return
        self._retire(rec)
        self.gone[pid] = (rec.meta["tenant"], why)
        while len(self.gone) > GONE_KEEP:
            self.gone.popitem(last=False)
        self.deleted += 1
        log.warning("deleted ended stream %s and its frames: %s", pid, why)
        rec.notify()
