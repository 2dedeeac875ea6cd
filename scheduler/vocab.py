"""The scheduler's vocabularies: formats, tiers, rungs, actions, pass kinds, states, reasons.

Every member is a `StrEnum`: it equals its string and hashes like it (``Tier.GPU == "gpu"``,
``{"gpu": 1}[Tier.GPU] == 1``), so callers that pass or compare plain strings keep working,
and a string from the edge becomes a member with ``Tier(value)`` (ValueError if unknown).
JSON and f-strings write the plain value.
"""

from __future__ import annotations

from enum import StrEnum


class Format(StrEnum):
    """Page formats the scheduler itself names.

    The set of formats a pool holds is open: any codec name `kernels` defines (a layout's
    `page_bytes` keys, e.g. "fp8" or "kivi-int2") is a valid format, and the scheduler treats
    formats as opaque except for these. So format fields stay `str`; these are the constants.
    """

    BF16 = "bf16"
    """Uncompressed: every committed page is written BF16; the sink and the window stay BF16."""
    QVG_INT4 = "qvg-int4"
    """Default early format (rung 1): near-lossless, so the first loss is the smallest."""
    QVG_INT2 = "qvg-int2"
    """Default deep format (rung 2): ~7x smaller than BF16 at QVG's measured quality."""


class Tier(StrEnum):
    """Storage tiers, fastest first. The CPU tier is pinned host memory; it may have 0 blocks."""

    GPU = "gpu"
    CPU = "cpu"


TIERS = tuple(Tier)
"""Every tier, fastest first."""


class Rung(StrEnum):
    """The memory-pressure ladder, cheapest loss first (DESIGN.md); rung n is RUNGS[n - 1]."""

    ENCODE = "encode"
    """1: BF16 middle pages become one span of the early format."""
    REENCODE = "reencode"
    """2: adjacent early-format spans become one span of the deep format."""
    OFFLOAD = "offload"
    """3: middle pages of idle streams move to the CPU tier."""
    DROP = "drop"
    """4: middle history is released; the stream goes on, degraded."""
    PREEMPT = "preempt"
    """5: a whole stream is offloaded (or dropped and later recomputed)."""
    REFUSE = "refuse"
    """6: submit() refuses new streams until pressure eases."""


RUNGS = tuple(Rung)
"""The ladder's rungs in order; SchedulerConfig.rungs names a subset."""


class EncodePolicy(StrEnum):
    """When BF16 pages that left the window are encoded."""

    EAGER = "eager"
    """As soon as a span's worth leaves the window, to the deep format, a few plans a step."""
    PRESSURE = "pressure"
    """Only above the high watermark (rung 1, early format), as round 1 did."""


class Unit(StrEnum):
    """What a ladder request's `need` counts."""

    BYTES = "bytes"
    """GPU pool bytes (the watermarks, a commit that does not fit the pool)."""
    PAGES = "pages"
    """GPU-resident pages of one tenant (its page_cap); encodes free none."""


class Action(StrEnum):
    """What an Order asks the runner to execute, and why (the rung, or a reload)."""

    ENCODE = "encode"
    REENCODE = "reencode"
    OFFLOAD = "offload"
    RELOAD = "reload"
    """CPU pages of a stream about to run go back to the GPU (undoes rung 3)."""
    PREEMPT = "preempt"
    """Offload of a whole stream (rung 5 when the CPU tier holds it)."""


class PlanKind(StrEnum):
    """Kind of a two-phase allocator plan."""

    ENCODE = "encode"
    """Write the pages again in another format (any format to any quantized one)."""
    MOVE = "move"
    """Copy the pages' bytes to another tier; the format stays."""


class PassKind(StrEnum):
    """Kind of one stream's pass in a step's forward (BatchItem.kind)."""

    DENOISE = "denoise"
    """A denoising step of the current chunk: reads the cache, writes nothing."""
    COMMIT = "commit"
    """The clean pass (t=0): writes the chunk's new BF16 pages."""
    RECOMPUTE = "recompute"
    """Rebuild the cache (sink + window) of a stream preempted by dropping."""


class StreamState(StrEnum):
    """Where a stream is in its life; FINISHED, CANCELLED and FAILED are final."""

    WAITING = "waiting"  # submitted, queued for admission, holds nothing
    RUNNING = "running"  # admitted, runnable: gets batch slots
    IDLE = "idle"  # admitted, paused by the client or backpressure: keeps pages, no compute
    PREEMPTED = "preempted"  # pages offloaded or dropped by the ladder; resumes later
    FINISHED = "finished"
    CANCELLED = "cancelled"
    FAILED = "failed"

    @property
    def final(self) -> bool:
        return self in (StreamState.FINISHED, StreamState.CANCELLED, StreamState.FAILED)


class Flag(StrEnum):
    """Conditions that ride along a state."""

    DEGRADED = "degraded"  # middle history dropped (rung 4) or lost to a recompute
    RECOMPUTE = "recompute"  # preempted by dropping: its cache is rebuilt from its latents


class Event(StrEnum):
    """What a history entry records; ladder events are named like the rungs and actions."""

    SUBMITTED = "submitted"
    ADMITTED = "admitted"
    IDLE = "idle"
    ACTIVE = "active"
    ENCODE = "encode"
    REENCODE = "reencode"
    OFFLOAD = "offload"
    RELOAD = "reload"
    DROP = "drop"
    PREEMPT = "preempt"
    RESTORE = "restore"
    PLAN_FAILED = "plan_failed"
    FINISHED = "finished"
    CANCELLED = "cancelled"
    FAILED = "failed"


class EndReason(StrEnum):
    """End reasons the scheduler gives itself. A runner's failure reason (StepResult.failed)
    and a caller's cancel reason are free text, so EndedStream.reason is a `str`."""

    COMPLETED = "completed"
    """FINISHED: the stream committed its target_chunks."""
    CLOSED = "closed"
    """FINISHED: the client closed an open-ended stream."""
    CANCELLED = "cancelled"
    """CANCELLED: the default reason of cancel()."""
    KV_EXHAUSTED = "kv_exhausted: no room for its next pass"
    """FAILED: runnable but without memory for max_blocked_steps steps."""


class RejectReason(StrEnum):
    """Why submit() rejected a stream (Admission.reason; the API's 429 / 413 / 409)."""

    DUPLICATE = "duplicate"
    """The stream id is live or remembered as ended."""
    TOO_LARGE = "too_large"
    """Its chunk exceeds max_batch_tokens, or its sink + window + chunk exceed the pool or
    its tenant's cap: it could never run."""
    KV_PRESSURE = "kv_pressure"
    """Rung 6: the ladder is refusing new streams (retry after retry_after_s)."""
    QUEUE_FULL = "queue_full"
    """max_waiting streams are already queued (retry after retry_after_s)."""
