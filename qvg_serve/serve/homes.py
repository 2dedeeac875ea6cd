"""Per-stream calls through the stream store (store.py): where a stream lives now, the call on
its home replica, and what to answer while it has none.

    ingress --route(id)--> StreamStore: {state: live | recovering | ended, home, ...}
            --method(id, replica=home)--> that engine replica (router.py sends it there)

A stream's public id names the replica it was born on, not where it runs: after a replica
dies or drains, the store re-homes its streams and is the only one that knows the new home.
A call that finds its home dead tells the store at once (`suspect`: no waiting for the beat
timeout) and the client gets 503 `recovering` + Retry-After, never a 404.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi.responses import JSONResponse

from qvg_serve.serve import stream_ids
from qvg_serve.serve.errors import ApiError, actor_died
from qvg_serve.serve.stream_ids import OWNER_KWARG

RECOVERING_RETRY_S = 2
"""Retry-After while a stream moves to another replica (a beat timeout plus a recompute)."""
SETTLE_TRIES, SETTLE_S = 200, 0.05
"""How long `settled` waits for the store to hear of an end the engine reported (10 s)."""


def not_found(stream_id: str) -> ApiError:
    return ApiError(404, "not_found", f"no stream {stream_id[:80]!r}", "stream_id")


def recovering(stream_id: str) -> ApiError:
    return ApiError(
        503,
        "recovering",
        f"stream {stream_id[:80]!r} is moving to another replica (its replica stopped); retry",
        "stream_id",
        {"Retry-After": str(RECOVERING_RETRY_S)},
    )


async def retrying(call, tries: int = 4):
    """A call to any engine replica, again on another if the one picked died (Serve drops a
    dead replica from the router within seconds); 503 + Retry-After if none answers."""
    for attempt in range(tries):
        try:
            return await call()
        except Exception as exc:
            if not actor_died(exc):
                raise
            if attempt < tries - 1:
                await asyncio.sleep(0.5 * (attempt + 1))
    raise ApiError(
        503,
        "unavailable",
        "no engine replica answered; retry",
        None,
        {"Retry-After": str(RECOVERING_RETRY_S)},
    )


class Homes:
    """The ingress's per-stream calls: `engine` is the engine deployment's handle, `store`
    the stream store actor."""

    def __init__(self, engine, store) -> None:
        self.engine, self.store = engine, store

    async def route(self, stream_id: str, who: str) -> dict[str, Any]:
        """The store's view of a stream (home replica, state); 404 if unknown or foreign,
        410 if it ended and its frames were deleted for a cap (store.py)."""
        got = None
        if stream_ids.owner(stream_id):
            got = await self.store.route.remote(stream_id, who)
        if got is None:
            raise not_found(stream_id)
        if got["state"] == "gone":
            raise ApiError(
                410,
                "gone",
                f"stream {stream_id[:80]!r} ended and was deleted before its retention: "
                f"{got['detail']}",
                "stream_id",
            )
        return got

    async def on_home(self, method: str, stream_id: str, who: str, where: dict, **kw):
        """`method` on the stream's home replica; None if it does not run it there now
        (ended, moved, or the replica died: then the store hears of it at once)."""
        if where["state"] != "live":
            return None
        kw[OWNER_KWARG] = where["home"]
        try:
            return await getattr(self.engine, method).remote(stream_id, tenant=who, **kw)
        except Exception as exc:
            if not actor_died(exc):
                raise
            self.store.suspect.remote(where["home"])
            return None

    async def settled(self, stream_id: str, who: str) -> dict[str, Any]:
        """The route once the store has the end the engine reported (a moment later)."""
        where = await self.route(stream_id, who)
        for _ in range(SETTLE_TRIES):
            if where["state"] != "live":
                return where
            await asyncio.sleep(SETTLE_S)
            where = await self.route(stream_id, who)
        return where

    async def cancel(self, stream_id: str, who: str) -> dict[str, Any]:
        where = await self.route(stream_id, who)
        if where["state"] == "ended":
            return {"cancelled": False, "pages_held": 0}
        got = await self.on_home("cancel", stream_id, who, where)
        if got is not None:
            return got
        if await self.store.cancel.remote(stream_id, who):  # re-homing: ends in the store
            return {"cancelled": True, "pages_held": 0}
        if (await self.settled(stream_id, who))["state"] == "ended":  # it ended on its home
            return {"cancelled": False, "pages_held": 0}  # before the store heard of it
        raise recovering(stream_id)

    async def status(self, stream_id: str, who: str) -> JSONResponse | dict[str, Any]:
        """The engine's snapshot while the stream runs, with the store's counts; the store's
        record once it ended or while it has no home."""
        where = await self.route(stream_id, who)
        snap = await self.on_home("status", stream_id, who, where)
        if snap is not None and snap["end_reason"] is not None:
            where, snap = await self.settled(stream_id, who), None
        elif snap is None and where["state"] == "live":
            where = await self.route(stream_id, who)  # moved or ended meanwhile
        return status_body(stream_id, where, snap)


def status_body(stream_id: str, where: dict, snap: dict | None) -> JSONResponse | dict:
    body = {**_EMPTY, **(snap or where["final"] or {})}
    body.update(
        id=stream_id,
        prompt=where["prompt"],
        frames_done=where["frames_done"],
        frames_wanted=where["frames_wanted"],
    )
    if snap is None and where["state"] == "recovering":
        body.update(state="recovering", chunks_done=where["chunks_done"], pages={}, bytes={})
        return JSONResponse(body, headers={"Retry-After": str(RECOVERING_RETRY_S)})
    if where["state"] == "ended":
        reason = where["end_reason"]
        body["end_reason"] = reason
        if where["final"] is None:
            body["state"] = _END_STATE.get(reason, "failed")
    return body


_EMPTY = {"state": "unknown", "chunks_done": 0, "pages": {}, "bytes": {}, "degraded": False,
          "preemptions": 0, "history": [], "end_reason": None}  # fmt: skip
_END_STATE = {"completed": "finished", "closed": "finished", "cancelled": "cancelled"}
