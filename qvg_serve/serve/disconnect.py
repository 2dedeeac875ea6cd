"""`cancel_on_disconnect`: a client hanging up on a stream's frames cancels the stream, when asked.

Why the cancel used to be missed (11 of 51 hang-ups, issue 16): the ingress issued it from
`_relay`'s `finally`, inside the very request Serve was cancelling. Two things then killed it:
Starlette's cancel scope re-cancels every `await` in that `finally` (so `await shield(ref)`
returned at once), and when the request task ended, Serve's replica cancelled every child
request of it still pending assignment (`RequestContext` links them), the cancel call among
them. Whether it had been assigned in between was a race.

So `_relay`'s `finally` starts the cancel with `detached`: a task in a fresh
`contextvars.Context`, so Serve sees no parent request to cancel it with, and no anyio cancel
scope reaches it. Frames come from the stream store (delivery.py), not from the replica, so
there is no replica-side frames generator to close; cancelling an ended stream is a no-op.
With the flag off nothing runs.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable
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
