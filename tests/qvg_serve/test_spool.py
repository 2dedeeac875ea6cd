"""Ended streams' frames under caps, without Ray: the spool's byte accounting and files
(serve/spool.py) and the store's keeper that spills and deletes (serve/frame_keeper.py)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from qvg_serve.serve.frame_keeper import FrameKeeper
from qvg_serve.serve.ops_config import DurabilitySettings
from qvg_serve.serve.spool import Spool, SpoolConfig
from qvg_serve.serve.stream_record import Durable

FPC = 3


def jpegs(stream: int, n: int, size: int = 100) -> list[bytes]:
    """`n` distinct fake JPEGs of `size` bytes (the spool never decodes them)."""
    return [bytes([stream, i]) * (size // 2) for i in range(n)]


def spool(tmp_path, ram: int, disk: int) -> Spool:
    return Spool(SpoolConfig(str(tmp_path / "app"), ram, disk))


def test_spills_the_oldest_ended_streams_until_ram_is_under_its_cap(tmp_path):
    s = spool(tmp_path, ram=250, disk=10_000)
    for pid in ("a", "b", "c"):
        s.ended(pid, 100)
    assert s.to_spill() == ["a"]  # 300 - 100 = 200 <= 250
    s.ended("d", 100)
    assert s.to_spill() == ["a", "b"]
    s.moved("a", 100)
    assert s.ram_bytes == 300 and s.disk_bytes == 100 and s.to_spill() == ["b"]


def test_disk_room_deletes_the_oldest_and_refuses_what_never_fits(tmp_path):
    s = spool(tmp_path, ram=0, disk=250)
    s.moved("a", 100)
    s.moved("b", 100)
    assert s.make_room(50) == []
    assert s.make_room(120) == ["a"]
    assert s.make_room(250) == ["a", "b"]
    assert s.make_room(251) is None


def test_frames_written_read_back_from_any_start_bytewise(tmp_path):
    s = spool(tmp_path, ram=0, disk=1 << 20)
    frames = jpegs(1, 8, size=10) + [b"\xff\xd8odd-size\xff\xd9"]  # 9 frames, last chunk of 3
    parts = [(k, k * FPC, frames[k * FPC : (k + 1) * FPC]) for k in range(3)]
    video = b"ftyp-moov-mdat"
    written = s.write("s-1", parts, video)
    assert written == sum(map(len, frames)) + len(video)
    for start in range(10):
        got = s.read("s-1", start, max_bytes=1 << 20)
        first = start // FPC
        assert [(k, f) for k, f, _ in got] == [(k, k * FPC) for k in range(first, 3)]
        assert [j for _, _, part in got for j in part] == frames[first * FPC :]
    assert s.video("s-1") == video


def test_reads_are_bounded_but_always_move_on(tmp_path):
    s = spool(tmp_path, ram=0, disk=1 << 20)
    parts = [(k, k * FPC, jpegs(k, FPC, size=100)) for k in range(4)]
    s.write("s", parts, None)
    assert [k for k, _, _ in s.read("s", 0, max_bytes=1)] == [0]  # one chunk at least
    assert [k for k, _, _ in s.read("s", 3, max_bytes=301)] == [1, 2]
    assert s.video("s") is None


def test_forget_removes_files_and_a_new_spool_clears_leftovers(tmp_path):
    s = spool(tmp_path, ram=0, disk=1 << 20)
    for pid in ("gone", "kept"):
        s.moved(pid, s.write(pid, [(0, 0, jpegs(0, 3))], None))
    s.forget("gone")
    assert s.disk_bytes == 300
    with pytest.raises(FileNotFoundError):
        s.read("gone", 0, 1 << 20)
    assert s.read("kept", 0, 1 << 20)
    (tmp_path / "app" / "not-ours").mkdir()
    (tmp_path / "app" / "not-ours" / "notes.txt").write_text("a user's file")
    fresh = spool(tmp_path, ram=0, disk=1 << 20)  # a restarted store: the old state is gone
    with pytest.raises(FileNotFoundError):
        fresh.read("kept", 0, 1 << 20)
    assert (tmp_path / "app" / "not-ours" / "notes.txt").exists()  # only our layout is removed


def test_config_checks_and_durability_settings_build_it(tmp_path):
    with pytest.raises(ValueError, match="ram_bytes"):
        SpoolConfig(str(tmp_path), -1, 0)
    cfg = DurabilitySettings(
        frames_ram_mib=1.5, frames_disk_gib=0.25, frames_dir=str(tmp_path)
    ).spool_config("app-a")
    assert cfg.ram_bytes == 3 << 19 and cfg.disk_bytes == 1 << 28
    assert cfg.root.startswith(str(tmp_path))
    assert cfg.root != DurabilitySettings(frames_dir=str(tmp_path)).spool_config("app-b").root


# -- the keeper: spill and delete on the store's event loop, with futures for object refs -----


def ended_stream(stream: int, chunks: int, size: int = 100) -> Durable:
    """An ended stream whose chunk refs are resolved futures (an ObjectRef is awaited alike)."""

    def ref(value):
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(value)
        return fut

    rec = Durable({"tenant": "acme", "fpc": FPC, "frames": chunks * FPC}, "r", 0)
    for k in range(chunks):
        rec.jpegs[k] = ref(jpegs(stream * 10 + k, FPC, size))
    rec.nbytes, rec.ended, rec.total, rec.frames_done = chunks * FPC * size, "completed", 6, 6
    return rec


async def settle(keeper: FrameKeeper) -> None:
    while keeper._spiller is not None and not keeper._spiller.done():
        await asyncio.sleep(0.01)


def test_keeper_moves_the_oldest_to_disk_and_serves_them_from_there(tmp_path):
    async def run():
        streams: dict[str, Durable] = {}
        keeper = FrameKeeper(streams, SpoolConfig(str(tmp_path), 700, 1 << 20))
        for n, pid in enumerate(("a", "b", "c")):  # 600 bytes each
            streams[pid] = ended_stream(n, chunks=2)
            keeper.ended(pid, streams[pid])
            await settle(keeper)
        assert [p for p, r in streams.items() if r.on_disk is not None] == ["a", "b"]
        assert keeper.frame_bytes() == {"ram": 600, "disk": 1200}
        assert streams["a"].jpegs == {} and streams["a"].chunks_done() == 2
        got = await keeper.read("a", 4)  # the chunk holding frame 4, whole
        assert got == [(1, 3, jpegs(1, FPC))]
        assert await keeper.read("c", 0) is None  # still in RAM: nothing on disk

    asyncio.run(run())


def test_keeper_deletes_the_oldest_at_the_disk_cap_with_a_log_line(tmp_path, caplog):
    async def run():
        streams: dict[str, Durable] = {}
        keeper = FrameKeeper(streams, SpoolConfig(str(tmp_path), 0, 1300))
        for n, pid in enumerate(("a", "b", "c")):
            streams[pid] = ended_stream(n, chunks=2)
            keeper.ended(pid, streams[pid])
            await settle(keeper)
        return streams, keeper

    with caplog.at_level(logging.WARNING, logger="qvg_serve.serve.store"):
        streams, keeper = asyncio.run(run())
    assert sorted(streams) == ["b", "c"] and keeper.frame_bytes() == {"ram": 0, "disk": 1200}
    assert "frames_disk_gib" in keeper.gone_why("a", "acme")
    assert keeper.gone_why("a", "globex") is None  # another tenant learns nothing
    assert any("deleted ended stream a" in r.message for r in caplog.records)
    assert asyncio.run(keeper.read("a", 0)) is None


def test_keeper_with_no_disk_deletes_past_the_ram_cap(tmp_path):
    async def run():
        streams = {"a": ended_stream(0, chunks=1)}
        keeper = FrameKeeper(streams, SpoolConfig(str(tmp_path), 0, 0))
        keeper.ended("a", streams["a"])
        await settle(keeper)
        return streams, keeper

    streams, keeper = asyncio.run(run())
    assert streams == {} and "exceed durability.frames_disk_gib" in keeper.gone_why("a", "acme")
