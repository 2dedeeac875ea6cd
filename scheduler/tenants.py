"""Tenant accounting: GPU pages per tenant, caps, floors, weighted fair share, victim order.

Unit: GPU-resident pages of any format (a page is a page), so encoding a tenant's pages
never changes its quota; offloading, dropping or preempting does.

Fair share of tenant t = (GPU pages in use by all tenants) * w_t / (sum of w over tenants
with admitted streams). Victims of the ladder come first from tenants above their share,
then from lower priority classes, then idle before running, then the stream that loses
least (fewest pages touched), then the least recently served.

A lease (`leases`, set by a server running several engines: qvg_serve/serve/quota.py) is
the part of a tenant's cluster-wide cap this scheduler may hold: its cap here is then
min(page_cap, lease), and a capped tenant without a lease gets no pages here. Under leases a
stream starts only when its full pages fit the lease beside its tenant's started streams'
(`fits_lease`), so streams on two replicas never wait for each other's pages.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import NamedTuple

from .config import SchedulerConfig
from .stream import Stream, StreamSpec, StreamState


class TenantPages(NamedTuple):
    """One capped tenant's GPU pages here, what it would hold next, and its configured cap."""

    held: int
    wanted: int
    """Full pages (`full_pages`) of its streams started here and of those waiting, at most
    the cap (and at least held)."""
    cap: int


class TenantBook:
    """GPU pages and admitted streams per tenant; O(1) updates, O(tenants) share."""

    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config
        self.gpu_pages: Counter[str] = Counter()
        self.incoming: Counter[str] = Counter()  # pages of pending reloads (count at commit)
        self.streams: Counter[str] = Counter()  # admitted, not ended
        self.leases: dict[str, int] | None = None  # None: the configured caps alone
        self.reserved: Counter[str] = Counter()  # admitted streams' pages at full length
        self._reserved_of: dict[int, int] = {}

    def add_stream(self, stream: Stream) -> None:
        self.streams[stream.spec.tenant] += 1
        n = self._reserved_of[stream.id] = self.full_pages(stream.spec)
        self.reserved[stream.spec.tenant] += n

    def remove_stream(self, stream: Stream) -> None:
        tenant = stream.spec.tenant
        self.streams[tenant] -= 1
        if self.streams[tenant] <= 0:
            del self.streams[tenant]
        self.reserved[tenant] -= self._reserved_of.pop(stream.id, 0)

    def full_pages(self, spec: StreamSpec) -> int:
        """GPU pages a stream may come to hold under its tenant's cap: its whole length (sink
        + window + one chunk if unbounded), at most the cap (its middle history is dropped
        past it)."""
        cfg = self.config
        least = cfg.sink_pages + cfg.window_pages + spec.pages_per_chunk
        n = least if spec.target_chunks is None else spec.target_chunks * spec.pages_per_chunk
        cap = cfg.tenant(spec.tenant).page_cap
        return n if cap is None else min(n, cap)

    def fits_lease(self, spec: StreamSpec) -> bool:
        """Under leases, a capped tenant's stream starts only when its full pages fit beside
        the full pages of its tenant's streams started here: a lease lent to a stream is never
        needed back by another one (no two replicas each wait for the other's pages)."""
        cap = self.cap(spec.tenant)
        if self.leases is None or cap is None:
            return True
        return self.reserved[spec.tenant] + self.full_pages(spec) <= cap

    def add_pages(self, stream: Stream, n: int) -> None:
        """`stream` gained (n > 0) or lost (n < 0) GPU pages."""
        stream.gpu_pages += n
        self.gpu_pages[stream.spec.tenant] += n

    def cap(self, tenant: str) -> int | None:
        """GPU pages `tenant` may hold here: its page_cap, or its lease if that is less."""
        cap = self.config.tenant(tenant).page_cap
        if cap is None or self.leases is None:
            return cap
        return min(cap, self.leases.get(tenant, 0))

    def cap_room(self, tenant: str) -> int | None:
        """GPU pages `tenant` may still take (None = no cap)."""
        cap = self.cap(tenant)
        return None if cap is None else cap - self.gpu_pages[tenant] - self.incoming[tenant]

    def fits_cap(self, tenant: str, n: int) -> bool:
        room = self.cap_room(tenant)
        return room is None or n <= room

    def pages(self, streams: Iterable[Stream]) -> dict[str, TenantPages]:
        """Held and wanted GPU pages of each capped tenant with pages or live streams here."""
        waiting: Counter[str] = Counter()
        for s in streams:
            if s.state is StreamState.WAITING:
                waiting[s.spec.tenant] += self.full_pages(s.spec)
        out = {}
        for t in set(waiting) | {t for t, n in self.gpu_pages.items() if n} | set(self.streams):
            cap = self.config.tenant(t).page_cap
            if cap is not None:
                held = self.gpu_pages[t]
                want = max(held, self.reserved[t]) + waiting[t]
                out[t] = TenantPages(held, min(cap, want), cap)
        return out

    def can_lose(self, victim: str, n: int, requester: str | None) -> bool:
        """Whether `victim` may lose `n` GPU pages to pressure from `requester`.

        A tenant may always shrink itself (its own cap); others stop at its floor.
        """
        if victim == requester:
            return True
        return self.gpu_pages[victim] - n >= self.config.tenant(victim).page_floor

    def over_share(self) -> set[str]:
        """Tenants holding more GPU pages than their weighted fair share."""
        total_weight = sum(self.config.tenant(t).weight for t in self.streams)
        used = sum(self.gpu_pages[t] for t in self.streams)
        if total_weight <= 0:
            return set()
        return {
            t
            for t in self.streams
            if self.gpu_pages[t] > used * self.config.tenant(t).weight / total_weight
        }


def victim_key(stream: Stream, over: set[str], loss: int) -> tuple[int, int, int, int, int, int]:
    """Sort key of a ladder candidate: smallest first is the first victim."""
    idle = stream.state is StreamState.IDLE or stream.paused
    return (
        0 if stream.spec.tenant in over else 1,
        stream.spec.priority,
        0 if idle else 1,
        loss,
        stream.last_served,
        stream.seq,
    )
