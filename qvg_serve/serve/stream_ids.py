"""Public stream ids: "<replica unique id>-<engine stream id>", and the keyword naming the owner.

The replica that creates a stream names itself in the id; the ingress passes that name as the
`replica=` keyword (OWNER_KWARG) of every per-stream call, and the request router (router.py)
offers Serve only that replica. No Ray import here: the API module needs these constants.
"""

from __future__ import annotations

import re

OWNER_KWARG = "replica"
"""Keyword of every per-stream call to an engine replica: the id part naming its owner."""

STREAM_ID = re.compile(r"^[A-Za-z0-9]{1,64}-[0-9]{1,18}$")


def make(replica: str, sid: int) -> str:
    return f"{replica}-{sid}"


def owner(stream: str) -> str:
    """The replica part of a well-formed id ("" when malformed)."""
    return stream.rpartition("-")[0] if STREAM_ID.match(stream) else ""


def engine_id(stream: str, replica: str) -> int | None:
    """The engine's stream number if `stream` is well formed and names `replica`, else None."""
    rid, _, num = stream.rpartition("-")
    if not STREAM_ID.match(stream) or rid != replica:
        return None
    return int(num)


ROSTER_KWARG = "roster"
"""Keyword of `roster()`: the router replaces it with every live replica's id (fanout.py)."""

AVOID_KWARG = "avoid"
"""Keyword of `create()`: replica ids that just refused it; the router places the stream
elsewhere by free KV (placement.py)."""
