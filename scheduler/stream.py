"""A stream (one video being generated): its spec, its state and its page table.

Its states, flags and history events are vocabularies: `vocab.StreamState`, `Flag`, `Event`.

    page table of one stream (oldest left), as runs of pages ("segments"):

    | sink: bf16 | span: qvg-int2 | span: qvg-int4, cpu | bf16 (encodable) | window: bf16 |
      sink_pages   encoded early    offloaded when cold   next to encode      window_pages

A segment is a run of consecutive pages with one format and one tier, locked by at most one
pending plan. The scheduler keeps the table here so that no step needs to ask the allocator
about every page: the ladder works on segments (a few per stream), never on single pages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from .config import Priority
from .vocab import Event, Flag, Format, StreamState, Tier

__all__ = ["Event", "Flag", "Segment", "Stream", "StreamSpec", "StreamState", "Transition"]


class Transition(NamedTuple):
    """One entry of a stream's history."""

    step: int
    event: str
    state: str
    detail: str


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """What the client asked for; fixed for the stream's life."""

    stream_id: int
    """Engine-wide unique id (the allocator's stream id too)."""
    tenant: str = "default"
    """Tenant that owns the stream (caps, floors and fair share are per tenant)."""
    priority: int = Priority.NORMAL
    """Priority class (config.Priority); higher wins batch slots and memory."""
    target_chunks: int | None = 7
    """Chunks to generate (7 x 3 frames = Self-Forcing's 21-frame video); None = until closed."""
    pages_per_chunk: int = 3
    """Pages one chunk commits (one page = one latent frame; Self-Forcing chunks are 3)."""
    page_tokens: int = 1560
    """Tokens of one page (one 480x832 latent frame = 30 x 52 patches)."""
    denoise_steps: int = 4
    """Denoising passes per chunk before the commit pass (Self-Forcing uses 4)."""
    target_fps: float | None = None
    """Video frames per second the client must receive (real-time: deadline ordering)."""
    frames_per_page: int = 4
    """Video frames one latent frame decodes to (Wan2.1's VAE: 4x temporal)."""

    def __post_init__(self) -> None:
        for name in ("pages_per_chunk", "page_tokens", "denoise_steps", "frames_per_page"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < (0 if name == "denoise_steps" else 1):
                raise ValueError(f"{name} = {value!r}; it must be a positive int")
        if self.target_chunks is not None and self.target_chunks < 1:
            raise ValueError(f"target_chunks = {self.target_chunks}; use >= 1 or None")
        if self.target_fps is not None and not self.target_fps > 0:
            raise ValueError(f"target_fps = {self.target_fps}; use > 0 or None")

    @property
    def chunk_tokens(self) -> int:
        return self.pages_per_chunk * self.page_tokens

    @property
    def chunk_seconds(self) -> float:
        """Seconds of video one chunk adds (0 for streams without a target fps)."""
        if self.target_fps is None:
            return 0.0
        return self.pages_per_chunk * self.frames_per_page / self.target_fps


class Segment:
    """A run of consecutive pages of one stream in one format and tier."""

    __slots__ = ("pages", "fmt", "tier", "plan")

    def __init__(self, pages: list[int], fmt: str, tier: str = Tier.GPU) -> None:
        self.pages = pages
        self.fmt = fmt
        self.tier = tier
        self.plan: int | None = None  # id of the pending plan that locks these pages

    def free(self) -> bool:
        """Not locked by a pending plan."""
        return self.plan is None

    def __repr__(self) -> str:
        return f"Segment({len(self.pages)} x {self.fmt}@{self.tier}, plan={self.plan})"


class Stream:
    """Mutable state of one stream; the scheduler is the only writer."""

    __slots__ = (
        "spec", "state", "flags", "history", "end_reason", "chunk", "step", "segments",
        "gpu_pages", "dropped_pages", "plans", "paused", "vtime", "last_served", "seq",
        "started_at", "version", "rebuild", "preempted_at", "blocked", "reserved", "_table",
    )  # fmt: skip

    def __init__(self, spec: StreamSpec, seq: int) -> None:
        self.spec = spec
        self.state = StreamState.WAITING
        self.flags: set[Flag] = set()
        self.history: list[Transition] = []
        self.end_reason: str | None = None
        self.chunk = 0  # committed chunks
        self.step = 0  # next pass of the current chunk: 0..denoise_steps-1, denoise_steps=commit
        self.segments: list[Segment] = []
        self.gpu_pages = 0  # pages on the GPU tier, any format (tenant quotas count these)
        self.dropped_pages = 0  # middle pages dropped by rung 4 / lost to recompute
        self.plans: set[int] = set()  # pending plan ids touching this stream
        self.paused = False  # client pause / backpressure: IDLE while admitted
        self.vtime = 0.0  # weighted-fair-queueing virtual time: +1/weight per batch slot
        self.last_served = -1  # scheduler step of its last batch slot
        self.seq = seq  # submission order, the tie-breaker everywhere
        self.started_at: float | None = None  # clock at admission (deadline origin)
        self.version = 0  # bumped at every run-queue push: older heap entries are stale
        self.rebuild = 0  # pages a recompute must rebuild (preempted by dropping)
        self.preempted_at = -1  # scheduler step of its last preemption
        self.blocked = 0  # consecutive picks that found no memory for its pass
        # BF16 pages taken for the current chunk's commit before its denoising passes run (the
        # commit pass writes them): a chunk that starts can always commit, never by a drop
        self.reserved: tuple[int, ...] = ()
        self._table: tuple[int, ...] | None = None

    @property
    def id(self) -> int:
        return self.spec.stream_id

    def record(self, step: int, event: Event, detail: str = "") -> None:
        self.history.append(Transition(step, event.value, self.state.value, detail))

    @property
    def committing(self) -> bool:
        """Its next pass is the commit pass (writes a chunk of new pages)."""
        return self.step >= self.spec.denoise_steps

    @property
    def done(self) -> bool:
        target = self.spec.target_chunks
        return target is not None and self.chunk >= target

    def deadline(self) -> float:
        """Clock time by which its next chunk is due (inf for streams without a target fps)."""
        if self.spec.target_fps is None or self.started_at is None:
            return float("inf")
        return self.started_at + (self.chunk + 1) * self.spec.chunk_seconds

    # -- page table ----------------------------------------------------------------------------

    def n_pages(self) -> int:
        return len(self.table())

    def table(self) -> tuple[int, ...]:
        """All page ids, oldest first (cached until the table changes)."""
        if self._table is None:
            self._table = tuple(p for s in self.segments for p in s.pages)
        return self._table

    def changed(self) -> None:
        self._table = None

    def append(self, pages: list[int], sink: int) -> None:
        """Append freshly committed BF16 pages; the first `sink` pages get their own segment."""
        have = self.n_pages()
        if have < sink:
            head, pages = pages[: sink - have], pages[sink - have :]
            last = self.segments[-1] if self.segments else None
            if last is not None and last.fmt == Format.BF16 and last.free():
                last.pages.extend(head)
            else:
                self.segments.append(Segment(head, Format.BF16))
        if pages:
            last = self.segments[-1] if self.segments else None
            if last is not None and have >= sink and last.fmt == Format.BF16 and last.free():
                last.pages.extend(pages)
            else:
                self.segments.append(Segment(list(pages), Format.BF16))
        self.changed()

    def split(self, index: int, n: int) -> Segment:
        """Cut segment `index` after its first `n` pages; returns the first part."""
        seg = self.segments[index]
        if 0 < n < len(seg.pages):
            rest = Segment(seg.pages[n:], seg.fmt, seg.tier)
            rest.plan = seg.plan  # a pending plan still covers both halves
            seg.pages = seg.pages[:n]
            self.segments.insert(index + 1, rest)
        return seg

    def middle(self, sink: int, window: int) -> tuple[int, int]:
        """(first, last + 1) segment indices strictly between the sink and the window.

        A segment straddling a boundary is split so the range is exact.
        """
        total = self.n_pages()
        if total <= sink + window:
            return 0, 0
        first = self._cut(sink)
        last = self._cut(total - window)
        return first, last

    def _cut(self, position: int) -> int:
        """Index of the segment starting at page `position`, splitting one if needed."""
        start = 0
        for i, seg in enumerate(self.segments):
            if start == position:
                return i
            if start < position < start + len(seg.pages):
                self.split(i, position - start)
                return i + 1
            start += len(seg.pages)
        return len(self.segments)
