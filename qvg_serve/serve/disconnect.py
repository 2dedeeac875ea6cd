"""`cancel_on_disconnect`: a client hanging up on a stream's frames cancels the stream, when asked.

Why the cancel used to be missed (11 of 51 hang-ups, issue 16): the ingress issued it from
`_relay`'s `finally`, inside the very request Serve was cancelling. Two things then killed it:
Starlette's cancel scope re-cancels every `await` in that `finally` (so `await shield(ref)`
returned at once), and when the request task ended, Serve's replica cancelled every child
request of it still pending assignment (`RequestContext` links them), the cancel call among
them. Whether it had been assigned in between was a race.

So a hang-up now cancels from two places, each outside the dying request:

    engine replica: `frames` is wrapped by `cancels_when_closed`; Serve closes that generator
                    with a CancelledError when the ingress drops the call ("CALL frames
                    CANCELLED"), and the wrapper then starts `self.cancel(...)` as a new task.
    ingress:        `_relay`'s `finally` starts the cancel call with `detached`, a task in a
                    fresh `contextvars.Context`: Serve sees no parent request to cancel it with
                    (covers a hang-up before the frames call reached the replica).

The two may both land; cancelling an ended stream is a no-op. With the flag off neither runs.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from typing import Any

log = logging.getLogger("qvg_serve.serve.disconnect")

_RUNNING: set[asyncio.Task] = set()  # the loop keeps only weak references to tasks


def detached(call: Callable[[], Awaitable[Any]]) -> asyncio.Task:
    """Run `await call()` in a task of its own, outside the current Serve request.

    The task runs in an empty `contextvars.Context`, so a deployment-handle call made in it has
    no parent request (Serve would cancel it with the parent) and no anyio cancel scope."""
    task = asyncio.get_running_loop().create_task(_run(call), context=contextvars.Context())
    _RUNNING.add(task)
    task.add_done_callback(_RUNNING.discard)
    return task


async def _run(call: Callable[[], Awaitable[Any]]) -> None:
    try:
        await call()
    except Exception:  # nobody awaits this task: say what failed instead of losing it
        log.exception("cancel after a client disconnect failed")


def cancels_when_closed(frames):
    """Decorate an engine replica's async-generator `frames(self, stream, *, tenant, replica,
    ...)`: it gains `cancel_on_disconnect=False`; when true and the generator is closed before
    it ends (the client hung up), `self.cancel(stream, tenant=, replica=)` runs detached."""

    @functools.wraps(frames)
    async def wrapped(self, stream: str, *, cancel_on_disconnect: bool = False, **kw):
        finished = False
        try:
            async with aclosing(frames(self, stream, **kw)) as parts:
                async for part in parts:
                    yield part
            finished = True
        finally:
            if cancel_on_disconnect and not finished:
                tenant, replica = kw["tenant"], kw["replica"]
                detached(lambda: self.cancel(stream, tenant=tenant, replica=replica))

    return wrapped
