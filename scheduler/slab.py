"""Slab allocator of one tier's byte arena: fixed blocks, typed on first use.

    arena of one tier (bytes)
    +--------------+--------------+--------------+--------------+--------------+
    | block 0      | block 1      | block 2      | block 3      | block 4      |
    | bf16 page    | int2|int2|.. | (free)       | cb|cb|cb|... | int2|int2|.. |
    | slot 0       | s0  |s1  |.. |              | s0|s1|s2|... | s0  |s1  |.. |
    +--------------+--------------+--------------+--------------+--------------+
    offset(block, slot) = block * block_bytes + slot * item_bytes(kind)
    unused tail of a block: block_bytes - items_per_block(kind) * item_bytes(kind)

A free block is typed to one item kind when its first slot is taken and returns to the free
block stack when its last slot is given back, so no kind can starve another of whole blocks.

Why these structures (all O(1) per take / give):
- Free blocks: a stack (list). Every free block is equivalent, so no order is needed; LIFO
  reuses recently touched blocks. Unlike vLLM's free queue (a linked list, because freed
  blocks stay cached and eviction order matters), freed KV here has no value to keep.
- Slots of one block: a counter of never-used slots plus a stack of freed ones, so typing a
  block costs O(1) instead of building a list of `items_per_block` slots.
- Blocks of a kind with a free slot: a list plus each block's index in it, so a block that
  fills up or empties leaves the list by swap-with-last in O(1) (a dict's first key is not
  O(1) after many deletions).
"""

from __future__ import annotations

from collections.abc import Mapping

from .layout import InvariantError, OutOfPages, blocks_short


class TierSlab:
    """Blocks and slots of one tier. Knows kinds and counts, never pages or streams."""

    def __init__(self, tier: str, blocks: int, item_bytes: Mapping[str, int], block_bytes: int):
        self.tier = tier
        self.n_blocks = blocks
        self.block_bytes = block_bytes
        self.item_bytes = dict(item_bytes)
        self.per_block = {k: block_bytes // b for k, b in item_bytes.items()}
        self._free_blocks = list(range(blocks - 1, -1, -1))  # pop() hands out block 0 first
        self._kind: list[str | None] = [None] * blocks
        self._used = [0] * blocks  # occupied slots per block
        self._fresh = [0] * blocks  # slots [fresh, per_block) were never handed out
        self._freed: dict[int, list[int]] = {}  # block -> stack of given-back slots
        self._partial: dict[str, list[int]] = {k: [] for k in item_bytes}
        self._partial_pos: dict[int, int] = {}  # block -> index in its kind's partial list
        self._typed_free = dict.fromkeys(item_bytes, 0)  # free slots in typed blocks, by kind
        self.used_items = dict.fromkeys(item_bytes, 0)
        self.typed_blocks = dict.fromkeys(item_bytes, 0)

    # -- queries -------------------------------------------------------------------------------

    def free_blocks(self) -> int:
        """Untyped blocks."""
        return len(self._free_blocks)

    def free_slots(self, kind: str) -> int:
        """Free slots inside blocks already typed to `kind`."""
        return self._typed_free[kind]

    def free_items(self, kind: str) -> int:
        """Items of `kind` that still fit: typed free slots plus whole free blocks."""
        return self._typed_free[kind] + len(self._free_blocks) * self.per_block[kind]

    def shortfall(self, demands: Mapping[str, int]) -> OutOfPages | None:
        """None if all `demands` (kind -> items) fit at once, else the first that does not."""
        free = len(self._free_blocks)
        return blocks_short(demands, self._typed_free, self.per_block, free, self.tier)

    def offset(self, kind: str, block: int, slot: int) -> int:
        """Byte offset of (block, slot) in this tier's arena."""
        return block * self.block_bytes + slot * self.item_bytes[kind]

    # -- take / give ---------------------------------------------------------------------------

    def take(self, kind: str) -> tuple[int, int]:
        """(block, slot) of a free slot of `kind`; the caller checked `shortfall` first."""
        partial = self._partial[kind]
        if partial:
            block = partial[-1]
        else:
            block = self._type_block(kind)
        freed = self._freed.get(block)
        if freed:
            slot = freed.pop()
        else:
            slot = self._fresh[block]
            self._fresh[block] += 1
        self._used[block] += 1
        self._typed_free[kind] -= 1
        self.used_items[kind] += 1
        if self._used[block] == self.per_block[kind]:
            self._unlist(kind, block)
        return block, slot

    def give(self, kind: str, block: int, slot: int) -> None:
        """Return (block, slot); an emptied block goes back to the free block stack."""
        if self._kind[block] != kind:
            raise InvariantError(f"{self.tier} block {block} is {self._kind[block]}, not {kind}")
        if self._used[block] == self.per_block[kind]:
            self._list(kind, block)  # it was full: it has a free slot again
        self._used[block] -= 1
        self._typed_free[kind] += 1
        self.used_items[kind] -= 1
        if self._used[block] == 0:
            self._untype_block(kind, block)
        else:
            self._freed.setdefault(block, []).append(slot)

    def _type_block(self, kind: str) -> int:
        block = self._free_blocks.pop()
        self._kind[block] = kind
        self.typed_blocks[kind] += 1
        self._typed_free[kind] += self.per_block[kind]
        self._list(kind, block)
        return block

    def _untype_block(self, kind: str, block: int) -> None:
        self._unlist(kind, block)
        self._typed_free[kind] -= self.per_block[kind]
        self._kind[block] = None
        self.typed_blocks[kind] -= 1
        self._fresh[block] = 0
        self._freed.pop(block, None)
        self._free_blocks.append(block)

    def _list(self, kind: str, block: int) -> None:
        self._partial_pos[block] = len(self._partial[kind])
        self._partial[kind].append(block)

    def _unlist(self, kind: str, block: int) -> None:
        partial = self._partial[kind]
        pos = self._partial_pos.pop(block)
        last = partial.pop()
        if last != block:  # swap-with-last: move the old last block into the hole
            partial[pos] = last
            self._partial_pos[last] = pos

    # -- audit ---------------------------------------------------------------------------------

    def check(self, occupied: Mapping[int, tuple[str, set[int]]]) -> None:
        """Recount everything against `occupied`: block -> (kind, slots held by live records)."""
        free = set(self._free_blocks)
        if len(free) != len(self._free_blocks):
            raise InvariantError(f"{self.tier}: a block is twice in the free stack")
        typed_free = dict.fromkeys(self.item_bytes, 0)
        used_items = dict.fromkeys(self.item_bytes, 0)
        typed_blocks = dict.fromkeys(self.item_bytes, 0)
        for block in range(self.n_blocks):
            kind, slots = occupied.get(block, (None, set()))
            self._check_block(block, free, kind, slots)
            if kind is not None:
                typed_free[kind] += self.per_block[kind] - len(slots)
                used_items[kind] += len(slots)
                typed_blocks[kind] += 1
        if (typed_free, used_items) != (self._typed_free, self.used_items):
            raise InvariantError(f"{self.tier}: slot counters disagree with a recount")
        if typed_blocks != self.typed_blocks:
            raise InvariantError(f"{self.tier}: typed block counters disagree with a recount")
        if len(free) + sum(typed_blocks.values()) != self.n_blocks:
            raise InvariantError(f"{self.tier}: free + typed blocks != total blocks")

    def _check_block(self, block: int, free: set[int], kind: str | None, slots: set[int]) -> None:
        where = f"{self.tier} block {block}"
        if kind is None:
            if block not in free or self._kind[block] is not None or self._used[block]:
                raise InvariantError(f"{where}: holds nothing but is not a free block")
            return
        if block in free or self._kind[block] != kind or self._used[block] != len(slots):
            raise InvariantError(f"{where}: kind/used disagree with the live records")
        freed = self._freed.get(block, [])
        never = set(range(self._fresh[block], self.per_block[kind]))
        if set(freed) & slots or never & slots or len(set(freed)) != len(freed):
            raise InvariantError(f"{where}: a live slot is also on a free list")
        if len(freed) + len(never) + len(slots) != self.per_block[kind]:
            raise InvariantError(f"{where}: used + free slots != slots per block")
        listed = self._partial_pos.get(block)
        if (listed is not None) != (len(slots) < self.per_block[kind]):
            raise InvariantError(f"{where}: partial-block list is stale")
        if listed is not None and self._partial[kind][listed] != block:
            raise InvariantError(f"{where}: partial-block index is stale")
