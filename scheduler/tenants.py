"""Tenant accounting: GPU pages per tenant, caps, floors, weighted fair share, victim order.

Unit: GPU-resident pages of any format (a page is a page), so encoding a tenant's pages
never changes its quota; offloading, dropping or preempting does.

Fair share of tenant t = (GPU pages in use by all tenants) * w_t / (sum of w over tenants
with admitted streams). Victims of the ladder come first from tenants above their share,
then from lower priority classes, then idle before running, then the stream that loses
least (fewest pages touched), then the least recently served.
"""

from __future__ import annotations

from collections import Counter

from .config import SchedulerConfig
from .stream import Stream, StreamState


class TenantBook:
    """GPU pages and admitted streams per tenant; O(1) updates, O(tenants) share."""

    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config
        self.gpu_pages: Counter[str] = Counter()
        self.incoming: Counter[str] = Counter()  # pages of pending reloads (count at commit)
        self.streams: Counter[str] = Counter()  # admitted, not ended

    def add_stream(self, tenant: str) -> None:
        self.streams[tenant] += 1

    def remove_stream(self, tenant: str) -> None:
        self.streams[tenant] -= 1
        if self.streams[tenant] <= 0:
            del self.streams[tenant]

    def add_pages(self, stream: Stream, n: int) -> None:
        """`stream` gained (n > 0) or lost (n < 0) GPU pages."""
        stream.gpu_pages += n
        self.gpu_pages[stream.spec.tenant] += n

    def cap_room(self, tenant: str) -> int | None:
        """GPU pages `tenant` may still take (None = no cap)."""
        cap = self.config.tenant(tenant).page_cap
        return None if cap is None else cap - self.gpu_pages[tenant] - self.incoming[tenant]

    def fits_cap(self, tenant: str, n: int) -> bool:
        room = self.cap_room(tenant)
        return room is None or n <= room

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
