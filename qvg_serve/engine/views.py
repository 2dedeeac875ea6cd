"""Read-only views of the engine for its callers: one stream's status, capacity, KV stats.

They run on the caller's thread of the engine (the engine loop's, between steps), read the
scheduler and the allocator, and return plain values. Bytes per page format are the pool's
exact page sizes; span codebooks are pool-wide and reported in `kv_stats`, not per stream.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qvg_serve.engine.report import KVStats
from scheduler.core import Scheduler
from scheduler.output import EndedStream
from scheduler.pages import PageAllocator
from scheduler.stream import Stream

if TYPE_CHECKING:
    from qvg_serve.engine.engine import Engine

LADDER_EVENTS = ("encode", "reencode", "offload", "reload", "drop", "preempt", "restore")
"""History events the status reports as the stream's degraded/preempted history."""


def stream_snapshot(rec: Stream | EndedStream | None, page_bytes: dict[str, int]) -> dict:
    """State, pages and bytes by format and tier, ladder history and end reason of a stream."""
    if rec is None:
        return _empty("unknown")
    pages: dict[str, dict[str, int]] = {}
    nbytes: dict[str, dict[str, int]] = {}
    if isinstance(rec, EndedStream):  # its pages were freed when it ended
        state, chunks, end, degraded = rec.state, rec.chunks, rec.reason, rec.degraded
    else:
        for seg in rec.segments:
            by_tier = pages.setdefault(seg.fmt, {})
            by_tier[seg.tier] = by_tier.get(seg.tier, 0) + len(seg.pages)
            b = nbytes.setdefault(seg.fmt, {})
            b[seg.tier] = b.get(seg.tier, 0) + len(seg.pages) * page_bytes[seg.fmt]
        state, chunks, end = rec.state.value, rec.chunk, rec.end_reason
        degraded = any(f.value == "degraded" for f in rec.flags)
    history = [
        {"step": t.step, "event": t.event, "state": t.state, "detail": t.detail}
        for t in rec.history
        if t.event in LADDER_EVENTS
    ]
    preempted = sum(1 for t in rec.history if t.event == "preempt")
    return {"state": state, "chunks_done": chunks, "pages": pages, "bytes": nbytes,
            "degraded": degraded, "preemptions": preempted, "history": history,
            "end_reason": end}  # fmt: skip


def _empty(state: str) -> dict[str, Any]:
    return {"state": state, "chunks_done": 0, "pages": {}, "bytes": {}, "degraded": False,
            "preemptions": 0, "history": [], "end_reason": None}  # fmt: skip


def capacity(alloc: PageAllocator, sched: Scheduler, streams_that_fit: int) -> dict[str, Any]:
    """Free GPU bytes and pages per format, and how many more streams admission would take.

    `streams_that_fit` comes from the scheduler's admission projection (scheduler/admission.py:
    history at the deep format, sink + window + one chunk BF16), the function admission itself
    uses, so the endpoint and admission never disagree.
    """
    st = alloc.stats()
    free_pages = {fmt: st.free_items("gpu", fmt) for fmt in alloc.layout.page_bytes}
    return {
        "free_bytes": st.free_bytes["gpu"],
        "total_bytes": st.total_bytes["gpu"],
        "free_pages": free_pages,
        "streams_that_fit": streams_that_fit,
        "live_streams": len(sched.streams),
        "waiting": sched.n_waiting,
        "refusing": sched.refusing,
    }


def kv_stats(alloc: PageAllocator, sched: Scheduler) -> KVStats:
    """Pages and bytes by (format, tier), arena totals, streams by state, ladder counters."""
    st = alloc.stats()
    states: dict[str, int] = {}
    for s in sched.streams.values():
        states[s.state.value] = states.get(s.state.value, 0) + 1
    for e in sched.ended.values():
        states[e.state] = states.get(e.state, 0) + 1
    return KVStats(
        pages={(fmt, tier): n for (tier, fmt), n in st.pages.items()},
        used_bytes={(fmt, tier): n for (tier, fmt), n in st.used_bytes.items()},
        total_bytes=dict(st.total_bytes),
        free_bytes=dict(st.free_bytes),
        bf16_page_bytes=alloc.layout.page_bytes["bf16"],
        streams=states,
        waiting=sched.n_waiting,
        ladder=dict(sched.counters),
        tenants={t: tuple(p) for t, p in sched.tenant_pages().items()},
    )


RESIDENT = ("running", "idle")
"""States of a stream whose pages sit in the GPU arena (admitted, not preempted)."""


def kv_summary(engine: Engine) -> dict[str, Any]:
    """The KV memory picture of the web page: bytes and pages by format and tier, what the
    same pages would take in BF16, the arena's capacity, and resident streams against what
    the arena would hold if their pages were BF16 (same streams, same lengths)."""
    st = engine.alloc.stats()
    bf16 = engine.alloc.layout.page_bytes["bf16"]
    pages: dict[str, dict[str, int]] = {}
    nbytes: dict[str, dict[str, int]] = {}
    for (tier, fmt), n in st.pages.items():
        pages.setdefault(fmt, {})[tier] = n
    for (tier, fmt), n in st.used_bytes.items():
        nbytes.setdefault(fmt, {})[tier] = n
    bf16_eq = {f: {t: n * bf16 for t, n in tiers.items()} for f, tiers in pages.items()}
    resident = sum(1 for s in engine.scheduler.streams.values() if s.state.value in RESIDENT)
    total = st.total_bytes["gpu"]
    gpu_used = sum(t.get("gpu", 0) for t in nbytes.values())
    gpu_bf16 = sum(t.get("gpu", 0) for t in bf16_eq.values())
    return {
        "capacity_bytes": dict(st.total_bytes),
        "bytes": nbytes,
        "pages": pages,
        "bf16_equivalent_bytes": bf16_eq,
        "resident_streams": resident,
        "bf16_would_hold": _fit(total, gpu_bf16, resident),
        "qvg_would_hold": _fit(total, gpu_used, resident),
        "live_streams": len(engine.scheduler.streams),
        "waiting": engine.scheduler.n_waiting,
    }


def _fit(capacity: int, used: int, streams: int) -> int | None:
    """Streams of the current mean size that `capacity` bytes hold; None with none resident."""
    return capacity * streams // used if streams and used else None


def model_facts(engine: Engine, text_encoder: Any) -> dict[str, Any]:
    """What a client needs to write a request: the model, its page formats and sizes, and the
    prompt words it knows when its text encoder has a vocabulary (the tiny model)."""
    mc = engine.mc
    return {
        "name": mc.name,
        "layers": mc.layers,
        "latent_frames_per_chunk": mc.frames_per_chunk,
        "page_bytes": dict(engine.alloc.layout.page_bytes),
        "vocabulary": sorted(getattr(text_encoder, "vocabulary", None) or []) or None,
        "examples": list(getattr(text_encoder, "examples", ()) or ()),
    }
