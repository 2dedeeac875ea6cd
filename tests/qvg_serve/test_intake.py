"""The intake (serve/intake.py): creates, DELETEs and status answered while a step runs, by the
scheduler's own admission rule, without a chunk after a cancel or a cancel said of a finished
stream."""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest
import torch

from qvg_serve.engine.config import EngineConfig
from qvg_serve.engine.engine import Engine
from qvg_serve.models import TINY_TEST, build_model
from qvg_serve.serve.engine_loop import EngineLoop
from qvg_serve.serve.metrics import Metrics
from scheduler.config import SchedulerConfig
from scheduler.output import Admission

MC = dataclasses.replace(TINY_TEST, name="intake-test", dim=128, heads=2)
MODEL = build_model(MC, "cpu", torch.float32, 0)
KW = {"tenant": "default", "priority": 1, "target_fps": None}


def text(i: int) -> torch.Tensor:
    return torch.randn(MC.text_len, MC.text_dim, generator=torch.Generator().manual_seed(i))


class Gated:
    """The loop's engine with a step that can be held (the 'step in progress')."""

    def __init__(self, **sched) -> None:
        sc = SchedulerConfig(max_batch_tokens=4 * MC.chunk_tokens, sink_pages=1, window_pages=1,
                             **sched)  # fmt: skip
        cfg = EngineConfig(model=MC.name, kv_cache_memory_bytes=64 << 20, centroids=16)
        self.engine = Engine(MODEL, cfg, sc)
        self.held, self.entered, self.go = threading.Event(), threading.Event(), threading.Event()
        self.steps_held = 0
        self.hold_if = lambda: False  # a predicate checked on the engine thread
        real = self.engine.step

        def step():
            if self.held.is_set() or self.hold_if():
                self.entered.set()
                assert self.go.wait(30), "the test never released the step"
                self.steps_held += 1
            return real()

        self.engine.step = step  # type: ignore[method-assign]
        self.chunks: dict[int, list[int]] = {}
        self.ends: dict[int, str] = {}
        self.ended = threading.Condition()
        self.loop = EngineLoop(self.engine, Metrics(), self._chunk, self._end)

    def _chunk(self, sid, chunk) -> None:
        self.chunks.setdefault(sid, []).append(chunk.index)

    def _end(self, sid, reason) -> None:
        with self.ended:
            self.ends[sid] = reason
            self.ended.notify_all()

    def create(self, seed: int, chunks: int) -> tuple[int, Admission]:
        sid, adm = self.loop.intake.admit(text(seed), chunks=chunks, **KW)
        if adm.accepted:
            self.loop.intake.submit(sid, text(seed), self.loop.refused, chunks=chunks, seed=seed,
                                    **KW)  # fmt: skip
        return sid, adm

    def hold_step(self) -> None:
        """Block the next step and wait until the engine thread is inside it."""
        self.go.clear()
        self.entered.clear()
        self.held.set()
        assert self.entered.wait(30)

    def release(self) -> None:
        self.hold_if = lambda: False
        self.held.clear()
        self.go.set()

    def wait_ends(self, *sids: int) -> None:
        with self.ended:
            assert self.ended.wait_for(lambda: all(s in self.ends for s in sids), 60), self.ends

    def close(self) -> None:
        self.release()
        self.loop.stop()


@pytest.fixture
def gated():
    made: list[Gated] = []

    def make(**sched) -> Gated:
        made.append(Gated(**sched))
        return made[-1]

    yield make
    for g in made:
        g.close()


def quick(fn):
    t0 = time.perf_counter()
    got = fn()
    return got, time.perf_counter() - t0


def test_create_status_and_delete_answer_while_a_step_is_held(gated):
    g = gated()
    a, adm = g.create(1, chunks=3)
    assert adm.accepted
    g.hold_step()  # a's first step is in progress (and stays so until released)
    (b, adm), t_create = quick(lambda: g.create(2, chunks=3))
    snap, t_status = quick(lambda: g.loop.intake.snapshot(a))
    res, t_cancel = quick(lambda: g.loop.intake.cancel(b))
    assert adm.accepted and b != a
    assert snap == {**snap, "state": "waiting", "chunks_done": 0, "end_reason": None}
    assert res is not None and res.live and res.pages_held == 0
    assert g.loop.intake.snapshot(b) is None  # queued, cancelling: the engine thread answers
    assert max(t_create, t_status, t_cancel) < 0.5 and not g.go.is_set()  # none waited
    assert g.steps_held == 0
    g.release()
    g.wait_ends(a, b)
    assert g.ends == {a: "completed", b: "cancelled"}
    assert g.chunks[a] == [0, 1, 2] and b not in g.chunks  # no chunk after the DELETE's answer
    assert g.loop.intake.snapshot(a)["state"] == "finished"  # published with its end
    g.engine.check_invariants()


def test_intake_admits_by_the_schedulers_rule_and_counts_rejections(gated):
    g = gated(max_waiting=3)
    a, _ = g.create(1, chunks=4)
    g.hold_step()  # the published view still counts a as waiting
    got = [g.create(10 + i, chunks=4)[1] for i in range(3)]
    assert [adm.accepted for adm in got] == [True, True, False]
    assert got[2].reason == "queue_full" and got[2].retry_after_s > 0
    g.release()
    g.wait_ends(a)
    assert g.loop.call(lambda: g.engine.scheduler.counters["queue_full"]).result(10) == 1
    # the same rule as the engine's own submit on the same state
    with pytest.raises(ValueError, match="text embeddings"):
        g.loop.intake.admit(torch.zeros(1, 1), chunks=4, **KW)


def test_a_stream_that_may_finish_now_is_cancelled_on_the_engine_thread(gated):
    g = gated()
    g.go.clear()
    box: dict[str, int] = {}
    g.hold_if = lambda: box.get("a") in g.engine.may_finish_next()  # next: its last commit
    box["a"] = a = g.loop.intake.admit(text(1), chunks=2, **KW)[0]
    g.loop.intake.submit(a, text(1), g.loop.refused, chunks=2, seed=1, **KW)
    assert g.entered.wait(60)
    assert g.loop.intake.cancel(a) is None  # it may complete in this step: ask the engine
    g.release()
    g.wait_ends(a)
    assert g.ends[a] == "completed" and g.chunks[a] == [0, 1]


def test_delete_of_a_live_stream_with_chunks_to_go_stops_it_before_its_next_step(gated):
    g = gated()
    a, _ = g.create(1, chunks=6)
    while not g.chunks.get(a):
        time.sleep(0.01)
    g.hold_step()
    n = len(g.chunks[a])
    res = g.loop.intake.cancel(a)
    assert res is not None and res.live
    assert g.loop.intake.cancel(a) is None  # a second DELETE asks the engine
    g.release()
    g.wait_ends(a)
    assert g.ends[a] == "cancelled" and len(g.chunks[a]) <= n + 1  # at most the held step's
    assert g.loop.call(g.engine.snapshot, a).result(10)["pages"] == {}


def test_an_admitted_stream_the_engine_refuses_gets_an_end(gated, monkeypatch):
    g = gated()
    real = g.engine.submit
    monkeypatch.setattr(
        g.engine, "submit", lambda *a, **k: (k["stream_id"], Admission(False, "too_large"))
    )
    a, adm = g.create(1, chunks=2)
    assert adm.accepted
    g.wait_ends(a)
    assert g.ends[a] == "rejected: too_large"
    monkeypatch.setattr(g.engine, "submit", real)
    b, _ = g.create(2, chunks=1)
    g.wait_ends(b)
    assert g.ends[b] == "completed"
