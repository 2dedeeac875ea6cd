"""One stream as the stream store (serve/store.py) holds it: what a replica needs to continue
it and a reader needs to read it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import ray


@dataclass
class Durable:
    """One stream as the store holds it."""

    meta: dict[str, Any]  # tenant, prompt, frames, seed, priority, target_fps, fpc, created
    home: str
    engine_id: int
    actions: list[tuple[int, str]] = field(default_factory=list)  # (from chunk, prompt)
    latents: dict[int, ray.ObjectRef] = field(default_factory=dict)  # chunk -> [C, F, h, w]
    jpegs: dict[int, ray.ObjectRef] = field(default_factory=dict)  # chunk -> list[bytes]
    nbytes: int = 0  # in the object store: latents, JPEGs, video.mp4
    latent_bytes: int = 0
    on_disk: int | None = None  # chunks on disk once spilled (then no refs are held)
    frames_done: int = 0  # frames of the contiguous committed prefix
    total: int | None = None  # frames there will be, once ended
    ended: str | None = None
    ended_at: float = 0.0
    final: dict[str, Any] | None = None  # the engine's last snapshot of it
    ending: tuple[str, int, dict | None, float] | None = None  # an end waiting for commits
    recovering_since: float | None = None
    video: ray.ObjectRef | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    def chunks_done(self) -> int:
        if self.on_disk is not None:
            return self.on_disk
        n = 0
        while n in self.jpegs:  # committed with its latents
            n += 1
        return n

    def prompt(self) -> str:
        return self.actions[-1][1] if self.actions else self.meta["prompt"]

    def state(self) -> str:
        if self.ended is not None:
            return "ended"
        return "recovering" if self.recovering_since is not None else "live"
