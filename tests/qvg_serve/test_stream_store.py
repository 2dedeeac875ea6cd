"""The stream store's bookkeeping (serve/store.py) without a Ray runtime: `ray.put` is replaced
by an awaitable box, and the actor's methods are called directly, in the orders Ray may run
them. The store is an async actor, so Ray does not keep one caller's calls in order: a home's
`end` can run before the `commit` of its last chunk. That lost the last chunk of a stream
(the kill -9 test in tests/serving/test_durability.py: the resumed stream never completed)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

pytest.importorskip("ray")

from qvg_serve.serve import delivery  # noqa: E402
from qvg_serve.serve import store as store_mod  # noqa: E402
from qvg_serve.serve.frames import encode_jpegs, parse_sse  # noqa: E402

FPC, FRAMES, PID = 3, 36, "a-1"
CHUNKS = FRAMES // FPC
META = {"tenant": "acme", "prompt": "p", "frames": FRAMES, "seed": 0, "priority": 1,
        "target_fps": None, "fpc": FPC, "created": 0.0}  # fmt: skip
JPEGS = encode_jpegs(torch.zeros(FPC, 8, 8, 3, dtype=torch.uint8))


class Box:
    """What `ray.put` returns here: awaitable like an ObjectRef (delivery awaits the JPEGs)."""

    def __init__(self, value) -> None:
        self.value = value

    def __await__(self):
        yield from ()
        return self.value


class Clock:
    """The store's `time` module: a clock the tests move (asyncio keeps the real one)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


class AsRemote:
    """`store.frames.remote(...)` for delivery.relay: the method called in this event loop."""

    def __init__(self, store: store_mod.StreamStore) -> None:
        self.frames = type("M", (), {"remote": staticmethod(store.frames)})


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(store_mod, "time", clock)
    return clock


@pytest.fixture
def store(monkeypatch, clock) -> store_mod.StreamStore:
    monkeypatch.setattr(store_mod.ray, "put", Box)
    st = store_mod.StreamStore(heartbeat_s=0.2, dead_after_s=1.5, retention_s=60.0)
    st.register(PID, dict(META), "a", 1)
    st.heartbeat("a", [PID])
    st.heartbeat("b", [])
    return st


def commit(st: store_mod.StreamStore, chunk: int, home: str = "a") -> bool:
    return st.commit(PID, home, chunk, np.zeros((2, 1, 2, 2), np.float32), JPEGS)


def test_an_end_that_overtakes_the_last_commit_waits_for_it(store):
    for k in range(CHUNKS - 1):
        assert commit(store, k)
    asyncio.run(store.end(PID, "a", "completed", FRAMES, {"state": "finished"}))  # ran first
    where = store.route(PID, "acme")
    assert where["state"] == "live" and where["end_reason"] is None, where
    assert commit(store, CHUNKS - 1)  # the last chunk lands after its end: kept
    where = store.route(PID, "acme")
    assert where["state"] == "ended" and where["end_reason"] == "completed", where
    assert where["frames_done"] == FRAMES and where["final"] == {"state": "finished"}
    assert not commit(store, CHUNKS - 1)  # a repeat after the end is still refused


def test_a_reader_gets_every_frame_and_the_end_whatever_the_order(store):
    """What the client saw: SSE from frame 30 on; before the fix the last 3 never came and no
    end either (the relay waited until retention released the stream)."""

    async def scenario() -> list[tuple[str, dict]]:
        for k in range(CHUNKS - 2):
            commit(store, k)
        relay = delivery.relay(AsRemote(store), PID, "acme", "sse", 30)
        reader = asyncio.ensure_future(_collect(relay))
        await asyncio.sleep(0)
        commit(store, CHUNKS - 2)
        await asyncio.sleep(0)
        await store.end(PID, "a", "completed", FRAMES, None)
        await asyncio.sleep(0)
        commit(store, CHUNKS - 1)
        return await asyncio.wait_for(reader, 10)

    events = asyncio.run(scenario())
    frames = [d["index"] for e, d in events if e == "frame"]
    assert frames == list(range(30, FRAMES)), frames
    assert events[-1] == ("end", {"reason": "completed", "frames": FRAMES}), events[-1]


async def _collect(relay) -> list[tuple[str, dict]]:
    body = b"".join([part async for part in relay])
    return parse_sse(body.decode().splitlines())


def test_a_held_end_of_a_live_home_settles_on_what_landed(store, clock):
    """A commit that never comes cannot hold readers forever: after dead_after_s the end
    settles on the frames that landed (the home still beats: it is not re-homed)."""
    for k in range(CHUNKS - 1):
        commit(store, k)
    asyncio.run(store.end(PID, "a", "completed", FRAMES, None))
    clock.now += 1.0
    store.heartbeat("a", [])
    store.heartbeat("b", [])
    assert store.route(PID, "acme")["state"] == "live"
    clock.now += 1.0
    store.heartbeat("a", [])
    store.heartbeat("b", [])
    where = store.route(PID, "acme")
    assert where["state"] == "ended" and where["end_reason"] == "completed", where
    got = asyncio.run(store.frames(PID, "acme", 0, 0.0))
    assert got["total"] == got["frames_done"] == FRAMES - FPC  # readers finish, nothing owed


def test_a_home_dying_with_a_held_end(store, clock):
    """Completed: re-homed, the new home continues from the commits that landed. Any other
    end (a cancel): it stays ended, no new home revives it."""
    for k in range(CHUNKS - 1):
        commit(store, k)
    asyncio.run(store.end(PID, "a", "completed", FRAMES, None))
    clock.now += 2.0
    reply = store.heartbeat("b", [])  # "a" silent past dead_after_s: re-homed to "b"
    assert reply["adopt"] == [PID]
    assert store.resume_info(PID, "b")["chunks_done"] == CHUNKS - 1
    assert not commit(store, CHUNKS - 1, home="a")  # the old home is fenced

    store.register("a-2", dict(META), "b", 2)
    store.commit("a-2", "b", 0, np.zeros((2, 1, 2, 2), np.float32), JPEGS)
    asyncio.run(store.end("a-2", "b", "cancelled", 2 * FPC, None))  # chunk 1 still on its way
    clock.now += 0.5
    store.heartbeat("a", [])
    clock.now += 1.6  # "b" silent past dead_after_s
    store.heartbeat("a", [])
    where = store.route("a-2", "acme")
    assert where["state"] == "ended" and where["end_reason"] == "cancelled", where
    assert store.resume_info("a-2", "a") is None and where["frames_done"] == FPC


def test_a_beat_that_overtakes_a_register_does_not_revoke_the_new_stream(store, monkeypatch):
    """A create registers its stream from the handler while the heartbeat thread beats; the
    store may run the beat first. A stream it does not know yet is revoked (how a home learns
    that the store forgot a stream), so the home leaves a new stream out of its beats until the
    register landed. Before, the client got 201 and the stream was cancelled as 'moved'."""
    from types import SimpleNamespace

    from qvg_serve.serve import durable

    monkeypatch.setattr(durable.ray, "get", lambda value, timeout=None: value)
    remote = SimpleNamespace(heartbeat=SimpleNamespace(remote=store.heartbeat))
    loop = SimpleNamespace(leases=(0, {}), tenants={}, offer_leases=lambda *a: None,
                           calls=[], call=lambda *a: loop.calls.append(a))  # fmt: skip
    engine = SimpleNamespace(facts=SimpleNamespace(frames_per_chunk=FPC), cancel="cancel")
    homing = durable.Homing("a", remote, engine, loop, lambda p: None, 0.2)
    new = durable.Local("a-2", 2, "acme", FRAMES, known=False)
    homing.track(new)  # registered, the store has not run the register yet
    homing.track(durable.Local(PID, 1, "acme", FRAMES))
    homing.beat_once()
    assert not new.moved and loop.calls == []  # not revoked, not cancelled
    store.register("a-2", dict(META), "a", 2)
    new.known = True
    homing.beat_once()
    assert not new.moved and loop.calls == []
    homing.track(durable.Local("a-3", 3, "acme", FRAMES))  # known, but the store has no record
    homing.beat_once()
    assert loop.calls == [("cancel", 3, durable.MOVED)]  # a forgotten stream is still revoked


def test_viewers_of_a_stream_share_its_store_reads(store):
    """100 viewers at the live edge: every one gets every frame once and the end, in about one
    store call per chunk (not 100), and one viewer hanging up does not cut the others off."""
    shared = delivery.SharedFrames(AsRemote(store))

    async def scenario():
        commit(store, 0)
        readers = [asyncio.ensure_future(_collect(delivery.relay(shared, PID, "acme", "sse", 0)))
                   for _ in range(100)]  # fmt: skip
        quitter = asyncio.ensure_future(_collect(delivery.relay(shared, PID, "acme", "sse", 0)))
        for k in range(1, CHUNKS):
            for _ in range(3):
                await asyncio.sleep(0)
            if k == 2:
                quitter.cancel()
            commit(store, k)
        await store.end(PID, "a", "completed", FRAMES, None)
        return await asyncio.wait_for(asyncio.gather(*readers), 10)

    for events in asyncio.run(scenario()):
        assert [d["index"] for e, d in events if e == "frame"] == list(range(FRAMES))
        assert events[-1] == ("end", {"reason": "completed", "frames": FRAMES})
    assert shared.calls <= 2 * CHUNKS + 2, shared.calls  # unshared: hundreds
