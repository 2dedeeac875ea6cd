"""Placing a new stream: power of two choices on each replica's free KV (no Ray import here).

    replica ── record_routing_stats() every ROUTING_STATS_PERIOD_S (Serve's public hook) ──>
        {"free_kv_bytes", "stream_kv_bytes", "at"}  ──> the router's RunningReplica.routing_stats
    create(avoid=[...]) in the router: sample two replicas not in `avoid`, rank by
        free_kv_bytes - stream_kv_bytes * (streams this router placed there after "at")

The correction term is what makes live figures usable in a burst: stats are up to a period
old, and 12 creates arriving at once would all read the same numbers and all pick the same
replica. Each router counts its own placements since the stats it ranks by; placements by
another ingress replica are not seen (at most one period of drift).

A replica without stats yet (just started) is ranked by those recent placements alone.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import Any

FORGET_S = 60.0
"""Placements older than this are dropped: every replica has reported since."""


def routing_stats(capacity: dict[str, Any], bf16_page_bytes: int, stream_pages: int) -> dict:
    """What a replica reports: free GPU KV bytes and what one new stream takes at least."""
    return {
        "free_kv_bytes": capacity["free_bytes"],
        "stream_kv_bytes": stream_pages * bf16_page_bytes,
        "at": time.time(),
    }


def _uid(replica) -> str:
    return replica.replica_id.unique_id


class KVPlacement:
    """The router's placement state: recent placements per replica."""

    def __init__(self, clock: Callable[[], float] = time.time, rng=random) -> None:
        self.clock, self.rng = clock, rng
        self._placed: dict[str, tuple[str, float]] = {}  # request id -> (replica id, when)

    def rank(self, replicas: Sequence, avoid: Sequence[str]) -> list[list]:
        """Serve's ranks for a create: the better of two sampled replicas first. `avoid`
        (replicas that just refused) are left out unless every replica is in it."""
        pool = [r for r in replicas if _uid(r) not in avoid] or list(replicas)
        two = self.rng.sample(pool, min(2, len(pool)))
        if all("free_kv_bytes" in (r.routing_stats or {}) for r in two):
            two.sort(key=self.free_bytes, reverse=True)
        else:
            two.sort(key=lambda r: self.placed_since(_uid(r), self.clock() - FORGET_S))
        return [[r] for r in two]

    def free_bytes(self, replica) -> float:
        st = replica.routing_stats
        since = self.placed_since(_uid(replica), st.get("at", 0.0))
        return st["free_kv_bytes"] - since * st.get("stream_kv_bytes", 0)

    def placed(self, request_id: str, replica_id: str) -> None:
        """Record (or correct, when Serve sent it elsewhere) where a create went."""
        now = self.clock()
        self._placed[request_id] = (replica_id, now)
        for rid in [k for k, (_, t) in self._placed.items() if now - t > FORGET_S]:
            del self._placed[rid]

    def placed_since(self, replica_id: str, at: float) -> int:
        return sum(1 for rid, t in self._placed.values() if rid == replica_id and t > at)
