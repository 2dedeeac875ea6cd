"""Sizes of the paged KV pool and the value types its allocator hands out.

Standard library only. `PoolLayout` says how big every item is and how many slab blocks each
tier has; the other types are the allocator's results: where a page lives (`PageLoc`), why an
allocation did not fit (`OutOfPages`, a value, never an exception), and what a pending
encode / move must copy (`Plan`).

Item kinds: a page of format F has kind ``F``; the codebook of a span of format F has kind
``codebook_kind(F)``. Formats whose codebook has 0 bytes have no codebook kind at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NamedTuple

from .vocab import TIERS, PlanKind, Tier

ALIGN_BYTES = 512
"""`from_budget` rounds blocks up to this so every block starts on a DMA-friendly boundary."""

_CODEBOOK_PREFIX = "codebook:"


def codebook_kind(fmt: str) -> str:
    """Slab item kind of the codebook of a span of format `fmt`."""
    return _CODEBOOK_PREFIX + fmt


def kind_format(kind: str) -> str:
    """Format an item kind belongs to (the inverse of `codebook_kind` for codebooks)."""
    return kind.removeprefix(_CODEBOOK_PREFIX)


def _check_sizes(name: str, sizes: Mapping[str, int], minimum: int) -> None:
    for fmt, nbytes in sizes.items():
        if not isinstance(fmt, str) or not fmt or fmt.startswith(_CODEBOOK_PREFIX):
            raise ValueError(f"{name}: bad format name {fmt!r}; use a non-empty name like 'bf16'")
        if not isinstance(nbytes, int) or nbytes < minimum:
            raise ValueError(f"{name}[{fmt!r}] = {nbytes!r}; it must be an int >= {minimum}")


@dataclass(frozen=True, slots=True)
class PoolLayout:
    """Item sizes and arena sizes of the pool; the tensor side allocates exactly this.

    Example: ``PoolLayout(block_bytes=4096, gpu_blocks=8, cpu_blocks=0,
    page_bytes={"bf16": 4096, "qvg-int2": 600}, codebook_bytes={"qvg-int2": 256})``
    gives 8 GPU blocks; a block typed to ``qvg-int2`` pages holds 4096 // 600 = 6 of them.
    """

    block_bytes: int
    """Bytes of one slab block; must hold the largest item (so any item fits in one block)."""
    gpu_blocks: int
    """Blocks in the GPU arena (arena bytes = gpu_blocks * block_bytes); >= 1."""
    cpu_blocks: int = 0
    """Blocks in the pinned-CPU arena; 0 (the default) means no CPU tier, nothing offloads."""
    page_bytes: Mapping[str, int] = field(default_factory=dict)
    """Format -> exact bytes of one page of that format, all metadata included; > 0 each."""
    codebook_bytes: Mapping[str, int] = field(default_factory=dict)
    """Format -> bytes of one span's codebook; a format missing here has none (0 bytes)."""

    def __post_init__(self) -> None:
        for name in ("block_bytes", "gpu_blocks", "cpu_blocks"):
            value = getattr(self, name)
            low = 0 if name == "cpu_blocks" else 1
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name} = {value!r}; it must be an int >= {low}")
        if not self.page_bytes:
            raise ValueError("page_bytes is empty; give at least one format, e.g. {'bf16': n}")
        _check_sizes("page_bytes", self.page_bytes, 1)
        _check_sizes("codebook_bytes", self.codebook_bytes, 0)
        extra = sorted(set(self.codebook_bytes) - set(self.page_bytes))
        if extra:
            raise ValueError(f"codebook_bytes names formats not in page_bytes: {extra}; add them")
        for kind, nbytes in self._item_sizes().items():
            if nbytes > self.block_bytes:
                raise ValueError(
                    f"block_bytes = {self.block_bytes} is smaller than item {kind!r} "
                    f"({nbytes} B); raise block_bytes to at least {nbytes}"
                )
        # Frozen means frozen: callers' dicts cannot change the layout behind our back.
        object.__setattr__(self, "page_bytes", MappingProxyType(dict(self.page_bytes)))
        object.__setattr__(self, "codebook_bytes", MappingProxyType(dict(self.codebook_bytes)))

    def _item_sizes(self) -> dict[str, int]:
        sizes = dict(self.page_bytes)
        sizes.update({codebook_kind(f): b for f, b in self.codebook_bytes.items() if b > 0})
        return sizes

    @property
    def item_bytes(self) -> Mapping[str, int]:
        """Kind -> bytes of one item, for every page kind and every non-empty codebook kind."""
        return MappingProxyType(self._item_sizes())

    def blocks(self, tier: str) -> int:
        """Blocks in `tier`'s arena."""
        return self.gpu_blocks if check_tier(tier) is Tier.GPU else self.cpu_blocks

    def items_per_block(self, kind: str) -> int:
        """How many items of `kind` (a format, or `codebook_kind(format)`) one block holds."""
        sizes = self._item_sizes()
        if kind not in sizes:
            raise ValueError(f"unknown item kind {kind!r}; known: {sorted(sizes)}")
        return self.block_bytes // sizes[kind]

    def has_codebook(self, fmt: str) -> bool:
        """Whether spans of `fmt` own a codebook item (codebook_bytes > 0)."""
        return self.codebook_bytes.get(fmt, 0) > 0

    @classmethod
    def from_budget(
        cls,
        page_bytes: Mapping[str, int],
        codebook_bytes: Mapping[str, int],
        gpu_budget_bytes: int,
        cpu_budget_bytes: int = 0,
    ) -> PoolLayout:
        """Blocks as big as the largest item (rounded up to ALIGN_BYTES), as many as fit."""
        sizes = [*page_bytes.values(), *codebook_bytes.values(), 1]
        block = -(-max(sizes) // ALIGN_BYTES) * ALIGN_BYTES
        if gpu_budget_bytes < block:
            raise ValueError(
                f"gpu_budget_bytes = {gpu_budget_bytes} holds no block of {block} B; "
                f"raise it to at least {block}"
            )
        if cpu_budget_bytes < 0:
            raise ValueError(f"cpu_budget_bytes = {cpu_budget_bytes}; it must be >= 0")
        return cls(
            block_bytes=block,
            gpu_blocks=gpu_budget_bytes // block,
            cpu_blocks=cpu_budget_bytes // block,
            page_bytes=page_bytes,
            codebook_bytes=codebook_bytes,
        )


_TIER_OF: dict[str, Tier] = {t.value: t for t in TIERS}
"""Name -> member: a dict read (~0.05 us) where Tier(name) costs ~1 us (several a step)."""


def check_tier(tier: str) -> Tier:
    """`tier` as a Tier member, or ValueError if it is not one of TIERS."""
    member = _TIER_OF.get(tier) if isinstance(tier, str) else None
    if member is None:
        raise ValueError(f"tier = {tier!r}; use one of {tuple(map(str, TIERS))}")
    return member


class OutOfPages(NamedTuple):
    """The arena cannot hold a request; returned (never raised) and nothing was changed."""

    tier: str
    kind: str
    needed_items: int
    free_items: int


class PageLoc(NamedTuple):
    """Physical place of one item: `nbytes` at byte `offset` of `tier`'s arena."""

    tier: str
    fmt: str
    block: int
    slot: int
    offset: int
    nbytes: int


class Relocation(NamedTuple):
    """Page `page` is copied (move) or re-encoded (encode) from `src` to `dst`."""

    page: int
    src: PageLoc
    dst: PageLoc


class SpanRelocation(NamedTuple):
    """The codebook of span `span` is copied from `src` to `dst` (moves only)."""

    span: int
    src: PageLoc
    dst: PageLoc


@dataclass(frozen=True, slots=True)
class Plan:
    """A pending encode or move: the tensor side copies/encodes src -> dst, then commits.

    Until `commit` or `abort`, both the source and the destination slots are used (that is the
    real transient memory) and the plan's pages and spans are locked against other plans.
    """

    id: int
    """Unique per allocator; commit/abort look the plan up by it."""
    kind: PlanKind
    """ENCODE writes dst in `fmt` (from any format); MOVE copies bytes to another tier."""
    relocations: tuple[Relocation, ...]
    """One per page, in the order the caller gave the pages (span order for encodes)."""
    fmt: str | None = None
    """Destination format of an encode; None for a move (pages keep their format)."""
    tier: str = Tier.GPU
    """Destination tier of every relocation (and codebook)."""
    span: int | None = None
    """Encode: id of the new span (live after commit); None when `fmt` has no codebook."""
    codebook: PageLoc | None = None
    """Encode: where the encoder writes the new span's codebook; None without a codebook."""
    codebook_moves: tuple[SpanRelocation, ...] = ()
    """Move: span codebooks that travel with the pages (see PageAllocator.begin_move)."""
    stream: int | None = None
    """Encode: the stream that asked (it holds every page); None for a move."""


class PageError(Exception):
    """The caller misused page ids: double free, use after free, a foreign page, a locked page."""


class InvariantError(AssertionError):
    """The accounting disagrees with itself: a bug in the allocator, never the caller's fault."""


def blocks_short(
    demands: Mapping[str, int],
    typed_free: Mapping[str, int],
    per_block: Mapping[str, int],
    free_blocks: int,
    tier: str,
) -> OutOfPages | None:
    """First kind of `demands` that does not fit, given all kinds draw on `free_blocks`.

    Each kind first fills free slots of blocks already typed to it, then takes whole blocks.
    """
    for kind, n in demands.items():
        extra = max(0, n - typed_free.get(kind, 0))
        need = -(-extra // per_block[kind])
        if need > free_blocks:
            return OutOfPages(
                tier, kind, n, typed_free.get(kind, 0) + free_blocks * per_block[kind]
            )
        free_blocks -= need
    return None


Key = tuple[str, str]
"""(tier, format) for pages and bytes; (tier, kind) for blocks and slots."""


@dataclass(frozen=True, slots=True)
class PoolStats:
    """A snapshot of the pool's accounting; cheap (counters, no recount)."""

    pages: Mapping[Key, int]
    """(tier, fmt) -> committed live pages (a shared page counts once)."""
    codebooks: Mapping[Key, int]
    """(tier, fmt) -> committed live span codebooks."""
    used_bytes: Mapping[Key, int]
    """(tier, fmt) -> bytes of every occupied slot: pages, codebooks, pending destinations."""
    pending_bytes: Mapping[str, int]
    """tier -> bytes held by pending plans' destinations (already inside used_bytes)."""
    total_bytes: Mapping[str, int]
    """tier -> arena bytes (blocks * block_bytes)."""
    free_bytes: Mapping[str, int]
    """tier -> total - used; includes slack in typed blocks that only their kind can use."""
    free_blocks: Mapping[str, int]
    """tier -> untyped blocks, usable by any kind."""
    blocks_by_kind: Mapping[Key, int]
    """(tier, kind) -> blocks typed to that kind."""
    free_slots: Mapping[Key, int]
    """(tier, kind) -> free slots inside blocks typed to that kind."""
    items_per_block: Mapping[str, int]
    """kind -> items one block holds."""
    spans: int
    """Live spans (each owns one codebook when its format has one)."""
    pending_plans: int
    """Plans begun and neither committed nor aborted."""

    def free_items(self, tier: str, kind: str) -> int:
        """Items of `kind` that still fit on `tier` if nothing else is allocated."""
        per = self.items_per_block[kind]
        return self.free_slots.get((tier, kind), 0) + self.free_blocks[tier] * per

    def fits(self, fmt: str, n: int, tier: str = Tier.GPU, codebook: bool = False) -> bool:
        """Whether `n` pages of `fmt` (plus one span codebook if `codebook`) fit on `tier`."""
        demands = {fmt: n}
        if codebook and codebook_kind(fmt) in self.items_per_block:
            demands[codebook_kind(fmt)] = 1
        typed = {k: self.free_slots.get((tier, k), 0) for k in demands}
        short = blocks_short(demands, typed, self.items_per_block, self.free_blocks[tier], tier)
        return short is None
