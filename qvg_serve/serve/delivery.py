"""Frames to clients, read from the stream store (store.py), never from an engine replica.

    client <--SSE / MJPEG-- ingress <--long poll: frames(id, next)-- StreamStore
                               \\<-- JPEG ObjectRefs, fetched from the object store

Reading from the store is what lets a stream outlive its replica without the client noticing:
when the replica dies the connection stays open, an SSE client gets a `recovering` event, and
frames resume once another replica continues the stream. It also keeps viewers off the engine
replicas' request slots (status, create and cancel never queue behind viewers).

Viewers of one stream share its reads (`SharedFrames`): the ingress makes one store call per
stream and frame index however many viewers wait at that index, and fetches each chunk's
JPEGs once, so 500 viewers of 4 live streams cost the store about what 4 viewers do and the
store stays free for status, create and DELETE (each asks it where the stream lives).

Exactly once across reconnects: SSE events carry the frame index as `id:`, a reconnect sends
`Last-Event-ID` (browsers' EventSource do it on their own) or `?start=N`, and delivery starts
at the next index. If the ingress loses the store mid-stream, SSE ends with `retry:` and a
`reconnect` event naming the next frame; MJPEG ends after its last whole part (a client
reconnects with `?start=<frames received>`).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections import Counter

from qvg_serve.serve.errors import ApiError, actor_died
from qvg_serve.serve.frames import jpeg_size, mjpeg_end, mjpeg_part, sse_event, sse_frame

log = logging.getLogger("qvg_serve.serve.delivery")

POLL_S = 5.0
"""Longest wait of one store call for new frames (then the ingress asks again)."""
RETRY_MS = 1000
"""SSE `retry:` given to clients: reconnect after 1 s (the store answers again by then)."""
VIEWER_RETRY_S = 5


class SharedFrames:
    """`store.frames.remote(...)` for `relay`, shared: concurrent calls with the same stream,
    tenant, start frame and wait join one store call (single flight), whose chunks' JPEG
    refs are fetched once and handed to every caller as lists. Nothing is kept after the
    call: a viewer behind the others reads on its own until it catches up."""

    def __init__(self, store) -> None:
        self.store = store
        self._flights: dict[tuple, asyncio.Future] = {}
        self.calls = 0  # store calls made (tests, benches)
        self.frames = _Remote(self._frames)

    async def _frames(self, pid: str, tenant: str, start: int, wait_s: float):
        key = (pid, tenant, start, wait_s)
        flight = self._flights.get(key)
        if flight is None:  # not in this request's context: Ray cancels a request's child
            # tasks with it, which would fail every viewer sharing the call
            loop = asyncio.get_running_loop()
            flight = loop.create_task(self._read(*key), context=contextvars.Context())
            self._flights[key] = flight
            flight.add_done_callback(lambda _f, k=key: self._flights.pop(k, None))
        return await asyncio.shield(flight)  # one viewer's hang-up does not cancel the rest

    async def _read(self, pid: str, tenant: str, start: int, wait_s: float):
        self.calls += 1
        got = await self.store.frames.remote(pid, tenant, start, wait_s)
        if got is None:
            return None
        refs = [ref for _, _, ref in got["chunks"] if not isinstance(ref, list)]
        fetched = iter(await asyncio.gather(*refs))
        chunks = [(k, first, ref if isinstance(ref, list) else next(fetched))
                  for k, first, ref in got["chunks"]]  # fmt: skip
        return {**got, "chunks": chunks}


class _Remote:
    def __init__(self, fn) -> None:
        self.remote = fn


class Viewers:
    """Open frames connections per tenant on this ingress replica (server.max_viewers_per_
    tenant). `check` refuses a new one at the cap; `open` counts it from its first byte to
    its close, so a response that never started holds nothing."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.by_tenant: Counter[str] = Counter()

    def check(self, tenant: str) -> None:
        if self.by_tenant[tenant] >= self.cap:
            raise ApiError(
                429,
                "too_many_viewers",
                f"this tenant holds {self.by_tenant[tenant]} open frames connections, the "
                f"cap (server.max_viewers_per_tenant = {self.cap}); close one or retry",
                None,
                {"Retry-After": str(VIEWER_RETRY_S)},
            )

    async def counted(self, tenant: str, gen):
        """`gen`'s parts, counted as one of `tenant`'s viewers while it runs."""
        self.by_tenant[tenant] += 1
        try:
            async for part in gen:
                yield part
        finally:
            self.by_tenant[tenant] -= 1
            if not self.by_tenant[tenant]:
                del self.by_tenant[tenant]


def sse_preamble() -> bytes:
    return f"retry: {RETRY_MS}\n\n".encode()


def sse_with_id(event: bytes, index: int) -> bytes:
    return f"id: {index}\n".encode() + event


async def relay(store, pid: str, tenant: str, fmt: str, start: int, preamble: bool = True):
    """Frames `start`.. of `pid` as MJPEG parts or SSE events, live until the stream ends;
    nothing for an unknown or foreign id. `preamble`: SSE starts with the `retry:` hint (the
    web page's feed, which merges several streams, leaves it out)."""
    sse = fmt == "sse"
    if sse and preamble:
        yield sse_preamble()
    i, size, told = start, None, False
    while True:
        try:
            got = await store.frames.remote(pid, tenant, i, POLL_S)
        except Exception as exc:
            if not actor_died(exc):
                raise
            log.warning("stream store unreachable while sending %s", pid, exc_info=True)
            if sse:
                yield f"retry: {RETRY_MS}\n".encode() + sse_event("reconnect", {"next": i})
            return
        if got is None:  # released (retention) while being read
            return
        for chunk, first, ref in got["chunks"]:
            jpegs = ref if isinstance(ref, list) else await ref  # inline once on disk
            size = size or (jpeg_size(jpegs[0]) if jpegs else None)
            for j, jpeg in enumerate(jpegs):
                if first + j < i:
                    continue
                yield (
                    sse_with_id(sse_frame(jpeg, i, chunk, size), i) if sse else mjpeg_part(jpeg, i)
                )
                i += 1
        if got["state"] == "ended" and i >= (got["total"] or 0):
            done = {"reason": got["end_reason"], "frames": got["total"]}
            yield sse_event("end", done) if sse else mjpeg_end()
            return
        recovering = got["state"] == "recovering"
        if sse and recovering and not told:
            yield sse_event("recovering", {"next": i})
        told = recovering


def resume_from(start: int, last_event_id: str | None) -> int:
    """The first frame to send: after `Last-Event-ID` when given (a reconnect), else `start`."""
    if last_event_id is not None and last_event_id.strip().isdigit():
        return max(start, int(last_event_id) + 1)
    return start


async def all_jpegs(store, pid: str, tenant: str) -> list[bytes]:
    """Every JPEG of an ended stream, in order (a stream on disk comes in several answers)."""
    out: list[bytes] = []
    while True:
        got = await store.frames.remote(pid, tenant, len(out), 0.0)
        if got is None:
            return out
        before = len(out)
        refs = [ref for _, _, ref in got["chunks"] if not isinstance(ref, list)]
        fetched = iter(await asyncio.gather(*refs))
        for _, first, ref in got["chunks"]:
            part = ref if isinstance(ref, list) else next(fetched)
            out.extend(part[len(out) - first :])
        want = got["total"] or got["frames_done"]
        if len(out) >= want or len(out) == before:  # all, or nothing more to come
            return out[:want]
