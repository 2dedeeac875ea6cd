"""What the scheduler tells the runner and what the runner tells back: frozen, plain values.

One engine step:

    out = scheduler.schedule()      # decide: batch, plans, pages freed, ladder events
    ... runner executes out.plans (copy / encode src -> dst), then the forward pass of
        out.batch (reading pages at their committed locations; plan sources stay valid) ...
    scheduler.update(StepResult(out.step, advanced=..., plans_done=...))

Pages in `freed` were released already (the runner may drop what it cached for them); pages in
a BatchItem's `new_pages` are written by that item's pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from .layout import Plan
from .stream import Transition
from .vocab import Action, PassKind

DENOISE = PassKind.DENOISE
COMMIT = PassKind.COMMIT
RECOMPUTE = PassKind.RECOMPUTE
"""BatchItem kinds under their old names (the engine imports these)."""


class BatchItem(NamedTuple):
    """One stream's pass in this step's forward."""

    stream_id: int
    kind: PassKind
    """DENOISE (a denoising step), COMMIT (clean latents, t=0: writes new_pages) or RECOMPUTE
    (rebuild the cache of a stream preempted by dropping, from its committed latents)."""
    chunk: int
    """Index of the chunk being generated (committed chunks so far)."""
    step: int
    """Denoising step index 0..denoise_steps-1; denoise_steps for the commit pass."""
    tokens: int
    """Query tokens of this pass (counted against max_batch_tokens)."""
    pages: tuple[int, ...]
    """The stream's page table, oldest first: the KV this pass attends to."""
    new_pages: tuple[int, ...] = ()
    """BF16 pages this pass writes (commit: the chunk's frames; recompute: sink + window)."""


class Order(NamedTuple):
    """A plan to execute this step, with why the scheduler made it."""

    plan: Plan
    stream_id: int
    action: Action
    """Why: the rung that made the plan, or RELOAD; PREEMPT is the offload of a whole stream."""


class Admission(NamedTuple):
    """Answer to submit(): queued, or rejected with a reason (the API's 429 + Retry-After)."""

    accepted: bool
    reason: str = ""
    """"" when accepted; else a RejectReason (queue_full, kv_pressure, too_large, duplicate)."""
    retry_after_s: float = 0.0
    """Seconds the client should wait before retrying (0 when retrying cannot help)."""


class SchedulerOutput(NamedTuple):
    """Everything decided by one schedule() call."""

    step: int
    batch: tuple[BatchItem, ...]
    orders: tuple[Order, ...]
    """Encode / move plans to execute before update() (plan sources stay valid until then)."""
    freed: tuple[int, ...]
    """Pages released this step (dropped history, preempted or ended streams)."""
    admitted: tuple[int, ...]
    preempted: tuple[int, ...]
    degraded: tuple[int, ...]
    ended: tuple[tuple[int, str], ...]
    """(stream id, end reason) of every stream that ended since the previous schedule(), by
    any of four paths: update() (the stream committed its last chunk: "completed"; or the
    runner reported it in StepResult.failed: the runner's reason), cancel() / close() between
    steps ("cancelled" or the caller's reason; "closed"), and inside this schedule() itself,
    when a runnable stream found no memory for max_blocked_steps picks (kv_exhausted)."""
    refusing: bool
    """Rung 6: submit() refuses new streams until memory pressure eases."""
    retry_after_s: float
    gpu_use: float
    """Projected GPU pool use after pending plans commit, 0..1 (the watermarks' measure)."""


class StepResult(NamedTuple):
    """The runner's report for one step; streams of the batch not named did not advance."""

    step: int
    advanced: tuple[int, ...] = ()
    """Streams whose batch item completed (a commit/recompute wrote its new pages)."""
    failed: tuple[tuple[int, str], ...] = ()
    """(stream id, reason) of streams that failed for good (they end FAILED)."""
    plans_done: tuple[int, ...] = ()
    """Ids of plans executed: the scheduler commits them."""
    plans_failed: tuple[int, ...] = ()
    """Ids of plans that could not be executed: the scheduler aborts them and retries later."""


class EndedStream(NamedTuple):
    """Summary of a stream that ended (kept for the API's status and for tests)."""

    stream_id: int
    tenant: str
    state: str
    """Its final StreamState's value: "finished", "cancelled" or "failed"."""
    reason: str
    """An EndReason, or free text from the runner (failed) or the caller (cancel)."""
    chunks: int
    degraded: bool
    history: tuple[Transition, ...] = ()
    """Every transition of its life, the end included."""


@dataclass(slots=True)
class Effects:
    """Internal: what one schedule() call did so far (it becomes the SchedulerOutput)."""

    step: int
    orders: list[Order] = field(default_factory=list)
    freed: list[int] = field(default_factory=list)
    preempted: list[int] = field(default_factory=list)
    degraded: list[int] = field(default_factory=list)
