"""Calling every engine replica: the roster, then one call per replica routed by its id.

Serve's handle sends a call to one replica; its public API has no broadcast and no replica
list for user code. The request router does see every live replica, so `roster()` carries a
keyword (ROSTER_KWARG) that `StreamRouter.choose_replicas` fills with their ids before the call
is sent (any replica answers it by echoing them back); each id then addresses one replica
through the same `replica=` routing every per-stream call uses.

    ingress ── roster(roster=[]) ──> router: roster=[a, b] ──> replica a: returns [a, b]
    ingress ── capacity(replica=a) ──> a      capacity(replica=b) ──> b       (concurrently)

A replica that died between the two calls is routed to another (router.py), which answers
None for an id not its own; those answers are dropped.
"""

from __future__ import annotations

import asyncio
from typing import Any

from qvg_serve.serve.stream_ids import OWNER_KWARG, ROSTER_KWARG


async def roster(engine) -> list[str]:
    """Unique ids of every engine replica the ingress's router knows now."""
    return await engine.roster.remote(**{ROSTER_KWARG: []})


async def each(engine, method: str, **kw: Any) -> list[Any]:
    """`method(**kw)` on every engine replica, concurrently; answers in roster order."""
    ids = await roster(engine)
    calls = [getattr(engine, method).remote(**kw, **{OWNER_KWARG: rid}) for rid in ids]
    return [got for got in await asyncio.gather(*calls) if got is not None]
