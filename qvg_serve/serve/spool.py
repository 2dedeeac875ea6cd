"""Ended streams' frames, bounded: the RAM accounting and the disk spool (no Ray, no torch).

    stream ends --> ram  {id: bytes}, oldest end first (the store's object refs hold them)
                     |  ram bytes > ram cap: the oldest ended streams move (spill)
                     v
                    disk <root>/<key>/frames.bin + index.json (+ video.mp4)
                     |  disk bytes > disk cap: the oldest spilled streams are deleted
                     v
                    gone (the store answers 410 for its id)

Live streams are never counted here, so they are never moved: a viewer of a live stream reads
object refs only. The store (store.py) owns the refs and calls this class on its event loop;
this class counts bytes, picks victims and does the file I/O (`write`, `read`, `video` and
`put_video` touch only one stream's folder, so the store runs them in a thread), which keeps
the policy testable without Ray.

frames.bin holds a stream's JPEGs back to back; index.json its chunks (index, first frame,
frame count) and every frame's byte offset, so a read from frame N seeks straight to it.
Counted bytes are the JPEGs' and the MP4's; the index (a few bytes a frame) is not.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

FILES = frozenset({"frames.bin", "index.json", "video.mp4"})
Part = tuple[int, int, list[bytes]]
"""One committed chunk as read: (chunk index, its first frame, its JPEGs)."""


def default_root(app: str, frames_dir: str | None = None) -> str:
    """`<frames_dir or the system temp dir/qvg-serve-frames>/<app>`: one folder per app, so
    two apps (or a restarted store clearing its leftovers) never touch each other's files."""
    base = Path(frames_dir) if frames_dir else Path(tempfile.gettempdir()) / "qvg-serve-frames"
    return str(base / _key(app))


def _key(name: str) -> str:
    """A file-system-safe folder name for any id (ids come from clients' URLs)."""
    return hashlib.sha1(name.encode()).hexdigest()[:20]


@dataclass(frozen=True, slots=True)
class SpoolConfig:
    """Where ended streams' frames go and how much of each medium they may take."""

    root: str
    """Folder of this app's spilled streams (one subfolder per stream)."""
    ram_bytes: int
    """Most object-store bytes held for ended streams' frames; beyond it the oldest spill."""
    disk_bytes: int
    """Most bytes of spilled frames under `root`; beyond it the oldest spilled are deleted."""

    def __post_init__(self) -> None:
        for name in ("ram_bytes", "disk_bytes"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} = {getattr(self, name)} < 0; use 0 or more bytes")
        if not self.root:
            raise ValueError("root is empty; name the folder for ended streams' frames")


class Spool:
    """Byte accounting of ended streams (in RAM, on disk) and their files on disk."""

    def __init__(self, cfg: SpoolConfig) -> None:
        self.cfg = cfg
        self.root = Path(cfg.root)
        self.ram: OrderedDict[str, int] = OrderedDict()  # ended, frames still in RAM
        self.disk: OrderedDict[str, int] = OrderedDict()  # spilled, oldest first
        self._clear_leftovers()

    def _clear_leftovers(self) -> None:
        """Folders an earlier store process wrote: its state died with it, so did they."""
        if not self.root.is_dir():
            return
        for folder in self.root.iterdir():
            if folder.is_dir() and {p.name for p in folder.iterdir()} <= FILES:
                shutil.rmtree(folder, ignore_errors=True)

    @property
    def ram_bytes(self) -> int:
        return sum(self.ram.values())

    @property
    def disk_bytes(self) -> int:
        return sum(self.disk.values())

    # -- accounting (the store's event loop) ---------------------------------------------------

    def ended(self, pid: str, nbytes: int) -> None:
        """`pid` ended holding `nbytes` of frames in RAM: it may be spilled from now on."""
        self.ram[pid] = nbytes

    def grow(self, pid: str, nbytes: int) -> None:
        """`pid` got `nbytes` more (its video.mp4), wherever it is."""
        for table in (self.ram, self.disk):
            if pid in table:
                table[pid] += nbytes

    def to_spill(self) -> list[str]:
        """The oldest ended streams whose moving brings RAM under its cap (none if under)."""
        return _oldest_covering(self.ram, self.ram_bytes - self.cfg.ram_bytes)

    def make_room(self, nbytes: int) -> list[str] | None:
        """Spilled streams to delete, oldest first, so `nbytes` more fit on disk; None when
        they never fit (more than the whole cap)."""
        if nbytes > self.cfg.disk_bytes:
            return None
        return _oldest_covering(self.disk, self.disk_bytes + nbytes - self.cfg.disk_bytes)

    def moved(self, pid: str, nbytes: int) -> None:
        """`pid`'s files are written (`nbytes`): its RAM bytes are now disk bytes."""
        self.ram.pop(pid, None)
        self.disk[pid] = nbytes

    def forget(self, pid: str) -> None:
        """`pid` is released or deleted: no bytes anywhere, its folder removed."""
        self.ram.pop(pid, None)
        if self.disk.pop(pid, None) is not None:
            shutil.rmtree(self._dir(pid), ignore_errors=True)

    # -- file I/O (one stream's folder; safe in a worker thread) --------------------------------

    def write(self, pid: str, parts: list[Part], video: bytes | None) -> int:
        """Write `pid`'s chunks (and its MP4); the bytes written, as counted."""
        folder = self._dir(pid)
        folder.mkdir(parents=True, exist_ok=True)
        chunks, offsets = [], [0]
        with open(folder / "frames.bin", "wb") as out:
            for chunk, first, jpegs in parts:
                chunks.append([chunk, first, len(jpegs)])
                for jpeg in jpegs:
                    out.write(jpeg)
                    offsets.append(offsets[-1] + len(jpeg))
        (folder / "index.json").write_text(json.dumps({"chunks": chunks, "offsets": offsets}))
        if video is not None:
            (folder / "video.mp4").write_bytes(video)
        return offsets[-1] + len(video or b"")

    def read(self, pid: str, start: int, max_bytes: int) -> list[Part]:
        """Whole chunks holding frames >= `start`, in order, until `max_bytes` are read (at
        least one chunk, so a reader always moves on). FileNotFoundError once deleted."""
        folder = self._dir(pid)
        index = json.loads((folder / "index.json").read_text())
        offsets, out, taken, pos = index["offsets"], [], 0, 0
        with open(folder / "frames.bin", "rb") as src:
            for chunk, first, n in index["chunks"]:
                lo, hi, pos = pos, pos + n, pos + n
                if first + n <= start:
                    continue
                if out and taken >= max_bytes:
                    break
                src.seek(offsets[lo])
                blob = src.read(offsets[hi] - offsets[lo])
                base = offsets[lo]
                jpegs = [blob[offsets[i] - base : offsets[i + 1] - base] for i in range(lo, hi)]
                out.append((chunk, first, jpegs))
                taken += len(blob)
        return out

    def video(self, pid: str) -> bytes | None:
        path = self._dir(pid) / "video.mp4"
        return path.read_bytes() if path.is_file() else None

    def put_video(self, pid: str, mp4: bytes) -> None:
        (self._dir(pid) / "video.mp4").write_bytes(mp4)

    def _dir(self, pid: str) -> Path:
        return self.root / _key(pid)


def _oldest_covering(table: dict[str, int], over: int) -> list[str]:
    """The first (oldest) entries of `table` whose bytes add up to at least `over`."""
    out: list[str] = []
    for pid, nbytes in table.items():
        if over <= 0:
            break
        out.append(pid)
        over -= nbytes
    return out
