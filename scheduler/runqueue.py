"""Order in which runnable streams get batch slots: deadlines first (bounded), then fair share.

Two heaps over the same streams, with lazy deletion (an entry is valid while its version
equals the stream's): O(log n) per pick, so a step costs O(batch * log n), not O(streams).

- Deadline heap: real-time streams (a target fps) by the clock time their next chunk is due.
  At most `deadline_slots` per step go this way, and only to streams due within the horizon,
  so real-time streams cannot take every slot.
- Fair heap: weighted fair queueing. A slot charges the stream 1 / weight of virtual time;
  the smallest virtual time goes next. A stream joining the runnable set starts at the
  queue's virtual clock, so a long pause buys no burst later.

No starvation: with R runnable streams whose weights lie in [w_min, w_max] and F >= 1 fair
slots a step, a stream that is not blocked on memory waits at most
ceil(R * w_max / w_min / F) steps for a slot (every slot given to others raises the minimum
virtual time, and its own virtual time is fixed while it waits).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator

from .stream import Stream

_Entry = tuple[float, int, int, int, Stream]  # (key, -priority, seq, version, stream)


class RunQueue:
    """Runnable streams; `pick` yields candidates best first, the caller re-pushes them."""

    def __init__(self) -> None:
        self._fair: list[_Entry] = []
        self._due: list[_Entry] = []
        self.vclock = 0.0  # virtual time of the last fair pick (monotone)
        self._live = {"_fair": 0, "_due": 0}  # live entries at the last compaction

    def join(self, stream: Stream) -> None:
        """`stream` became runnable (admitted, resumed, unpaused)."""
        stream.vtime = max(stream.vtime, self.vclock)
        self.push(stream)

    def push(self, stream: Stream) -> None:
        """(Re)insert with current keys; any older entry of `stream` becomes stale."""
        stream.version += 1
        rank = -stream.spec.priority  # ties go to the higher priority class, then the older
        heapq.heappush(self._fair, (stream.vtime, rank, stream.seq, stream.version, stream))
        if stream.spec.target_fps is not None:
            entry = (stream.deadline(), rank, stream.seq, stream.version, stream)
            heapq.heappush(self._due, entry)
        self._compact()

    def pick(
        self, now: float, horizon: float, deadline_slots: int, valid: Callable[[Stream], bool]
    ) -> Iterator[Stream]:
        """Candidates in order; each yielded stream left both heaps (the caller re-pushes it)."""
        seen: set[int] = set()
        taken = 0
        while taken < deadline_slots and self._due:
            deadline, _, _, version, stream = self._due[0]
            if version != stream.version or not valid(stream) or stream.id in seen:
                heapq.heappop(self._due)
                continue
            if deadline > now + horizon:
                break
            heapq.heappop(self._due)
            seen.add(stream.id)
            taken += 1
            yield stream
        while self._fair:
            vtime, _, _, version, stream = heapq.heappop(self._fair)
            if version != stream.version or not valid(stream) or stream.id in seen:
                continue
            self.vclock = max(self.vclock, vtime)
            seen.add(stream.id)
            yield stream

    def _compact(self) -> None:
        """Drop stale entries once they outnumber live ones (keeps the heaps O(streams))."""
        for name in ("_fair", "_due"):
            heap: list[_Entry] = getattr(self, name)
            if len(heap) > 2 * self._live[name] + 64:
                live = [e for e in heap if e[3] == e[4].version]
                heapq.heapify(live)
                setattr(self, name, live)
                self._live[name] = len(live)
