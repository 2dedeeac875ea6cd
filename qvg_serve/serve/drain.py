"""Draining on SIGTERM / SIGINT: stop admitting, let live streams finish, then stop Serve + Ray.

signal ──> cli.py sets an Event (the handler only does that) ──> main thread:
    1. ingress.drain()      every QVGIngress replica answers create with 503 + Retry-After
    2. poll ingress.live()  live + waiting streams summed over every engine replica
                            (fanout.py), until 0 or server.drain_timeout_s
    3. serve.shutdown()     Serve's own graceful stop: open frame connections get
                            graceful_shutdown_timeout_s to finish reading
    4. ray.shutdown()       the local Ray's raylet, GCS and agents exit with it
a second signal during 1-2 skips to 3 (an operator pressing Ctrl-C twice means now).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("qvg_serve.serve.drain")

POLL_S = 0.5
"""How often the draining driver re-counts live streams."""


@dataclass
class Draining:
    """The ingress's switch: once on, creates answer 503 with Retry-After."""

    on: bool = False
    retry_after_s: int = 5
    """What a refused client is told to wait: about a load balancer's health-check period."""
    relays: int = 0
    """Frames connections open on this ingress: a drain waits for viewers to get their end."""


def drain(ingress, timeout_s: float, abort: Callable[[], bool], clock=time.monotonic) -> int:
    """Steps 1-2 through the ingress deployment's handle; returns the streams still live
    when it stopped waiting (0 = all finished). `abort()` true ends the wait early."""
    ingress.drain.remote().result(timeout_s=30)
    end, live = clock() + timeout_s, -1
    while True:
        live = ingress.live.remote().result(timeout_s=30)
        if live == 0 or clock() >= end or abort():
            break
        time.sleep(POLL_S)
    if live:
        log.warning("drain: %d streams still live after %.0f s; stopping anyway", live, timeout_s)
    return live
