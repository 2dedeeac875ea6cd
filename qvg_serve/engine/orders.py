"""A step's pool plans, and where they run: moves before the forward, span encodes beside it.

    Engine.step():  moves (offload / reload)   compute stream, now: the batch may read what a
                                               reload brings back
                    forward launched           compute stream (kernels queued, not waited for)
                    encodes                    side CUDA stream, from a mark taken before the
                                               forward: they overlap the forward on the GPU
                    compute stream waits for the side stream, then the step's commits and
                    frames (so the next step, and any page a later plan frees, sees them done)
                    one host sync on the side stream: the encodes' NaN/Inf checks, deferred
                    (a bad plan raises before anything is committed)

Why this is safe: a plan changes no page's location before `scheduler.update()` commits it,
so the forward reads an encode's bf16 sources, never its destinations; the destinations are
fresh items nobody reads before the commit; and the commit pass writes pages that were free
when the step was scheduled, never a pending plan's sources. The encodes' NaN/Inf checks are
queued on the device and read once at the end (`KVPool.finish_checks`), so the host queues
every encode back to back instead of waiting for each one's input check.

Without CUDA, or with `EngineConfig.overlap_encodes` off, the same order runs on one stream
(the bytes written are the same either way: tests/qvg_serve/test_engine.py).
"""

from __future__ import annotations

import contextlib
import logging

import torch

from qvg_serve.engine.kv_pool import KVPool

log = logging.getLogger(__name__)


class Orders:
    """Runs plans on the pool and says which were done and which failed (device OOM)."""

    def __init__(self, pool: KVPool, device: torch.device, overlap: bool) -> None:
        self.pool = pool
        self.side = torch.cuda.Stream(device) if overlap and device.type == "cuda" else None
        self._mark: torch.cuda.Event | None = None

    @staticmethod
    def split(orders) -> tuple[list, list]:
        """(moves, encodes) of a step's orders, each in the scheduler's order."""
        moves = [o for o in orders if o.plan.kind == "move"]
        return moves, [o for o in orders if o.plan.kind != "move"]

    def mark(self) -> None:
        """Before the forward is launched: what the side stream's encodes must wait for."""
        if self.side is not None:
            self._mark = torch.cuda.Event()
            self._mark.record(torch.cuda.current_stream(self.side.device))

    def run(self, orders, beside: bool = False) -> tuple[list[int], list[int]]:
        """Execute `orders` (plan ids done, failed); `beside`: on the side stream from the
        last `mark`, the compute stream then waiting for it."""
        side = self.side if beside and orders else None
        ctx = contextlib.nullcontext() if side is None else torch.cuda.stream(side)
        done, failed = [], []
        try:
            with ctx:
                if side is not None and self._mark is not None:
                    side.wait_event(self._mark)
                for order in orders:
                    try:
                        self.pool.execute(order.plan, defer_checks=True)
                        done.append(order.plan.id)
                    except torch.OutOfMemoryError:  # a codec temp did not fit now: retry
                        log.warning("plan %d (%s): device OOM, retried", order.plan.id,
                                    order.action)  # fmt: skip
                        failed.append(order.plan.id)
                    # anything else would fail again every step (a silent stall): propagates
                self.pool.finish_checks()  # one host sync (this stream) for all encodes
        finally:
            self.pool.drop_checks()
            if side is not None:
                torch.cuda.current_stream(side.device).wait_stream(side)
        return done, failed
