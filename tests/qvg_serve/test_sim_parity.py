"""The simulator runs the engine's policy (issue 13, item 5): the real Engine (tiny model, CPU)
and scheduler/sim.py, given the same SchedulerConfig, pool layout and streams, make the same
ladder actions at the same steps, the same drops, preempts and completions, stream by stream.

The scenario is the issue's: 8 streams x 24 latent frames in an arena of 0.5x their BF16
history (the QVG ladder must lose nothing there), and a tighter arena (0.3x) with fewer
streams, where admission has to hold streams back. BF16-only paging in both arenas loses
history (asserted: the pressure is real). Both sides audit every step.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from qvg_serve.engine.config import EngineConfig
from qvg_serve.engine.engine import Engine
from qvg_serve.engine.views import stream_snapshot
from qvg_serve.models import TINY_TEST, build_model
from scheduler import audit
from scheduler.config import SchedulerConfig
from scheduler.sim import Arrival, Simulator, Workload
from scheduler.stream import StreamSpec

# head_dim 64 so QVG groups fit; 35 tokens per frame; 2 denoising steps + 1 commit per chunk
MC = dataclasses.replace(TINY_TEST, name="parity-test", dim=128, heads=2)
MODEL = build_model(MC, "cpu", torch.float32, 0)
PAGE = 2 * MC.layers * MC.tokens_per_frame * MC.dim * 2  # one BF16 page: K and V, every layer
MODES = {
    "qvg": {},  # every rung, encode_policy eager (the defaults)
    "bf16": {"rungs": frozenset({"offload", "drop", "preempt", "refuse"}),
             "encode_policy": "pressure"},
}  # fmt: skip


def scheduler_config(mode: str) -> SchedulerConfig:
    return SchedulerConfig(
        max_batch_streams=4,
        max_batch_tokens=4 * MC.chunk_tokens,
        sink_pages=1,
        window_pages=1,
        **MODES[mode],  # type: ignore[arg-type]
    )


def text(i: int) -> torch.Tensor:
    return torch.randn(MC.text_len, MC.text_dim, generator=torch.Generator().manual_seed(i))


def spec(sid: int, chunks: int) -> StreamSpec:
    """The spec Engine.submit builds for the tiny model (stream ids start at 1)."""
    return StreamSpec(
        sid, target_chunks=chunks, pages_per_chunk=MC.frames_per_chunk,
        page_tokens=MC.tokens_per_frame, denoise_steps=len(MC.timesteps),
        frames_per_page=MC.frames_per_latent,
    )  # fmt: skip


def run_engine(sc: SchedulerConfig, streams: int, chunks: int, arena: int):
    cfg = EngineConfig(model=MC.name, kv_cache_memory_bytes=arena, centroids=16)
    eng = Engine(MODEL, cfg, sc)
    ids = [eng.submit(text(i), chunks=chunks, seed=i)[0] for i in range(streams)]
    while eng.busy():
        eng.step()
        eng.check_invariants()  # the pool's audit and the scheduler's (scheduler/audit.py)
    page_bytes = dict(eng.alloc.layout.page_bytes)
    return eng.alloc.layout, {sid: eng.snapshot(sid) for sid in ids}, page_bytes, eng


def run_sim(sc: SchedulerConfig, layout, ids, chunks: int):
    sim = Simulator(sc, layout, Workload(tuple(Arrival(0, spec(sid, chunks)) for sid in ids)))

    def check(_out) -> None:
        sim.alloc.check_invariants()
        audit.check(sim.scheduler)

    result = sim.run(100_000, observe=check)
    views = {sid: stream_snapshot(sim.scheduler.get(sid), dict(layout.page_bytes)) for sid in ids}
    return views, {str(k): v for k, v in result.counters.items()}


def losses(views: dict[int, dict]) -> tuple[int, int, int]:
    """(drops, preempts, completed) over the streams' histories."""
    events = [h["event"] for v in views.values() for h in v["history"]]
    done = sum(1 for v in views.values() if v["end_reason"] == "completed")
    return events.count("drop"), events.count("preempt"), done


@pytest.fixture
def one_thread():
    """One intra-op thread: these tensors are tiny, and on a shared CPU box more threads cost
    ~8x the CPU time (oversubscription) without running any faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("streams", "chunks", "fraction"), [(8, 8, 0.5), (6, 6, 0.3)], ids=["0.5x", "0.3x"]
)
def test_engine_and_simulator_make_the_same_decisions(one_thread, streams, chunks, fraction):
    arena = int(fraction * streams * chunks * MC.frames_per_chunk * PAGE)
    got = {}
    for mode in MODES:
        sc = scheduler_config(mode)
        layout, eng_views, _, eng = run_engine(sc, streams, chunks, arena)
        sim_views, sim_counters = run_sim(sc, layout, list(eng_views), chunks)
        # stream by stream: state, chunks, end reason, every ladder event and its step
        assert eng_views == sim_views, mode
        assert {str(k): v for k, v in eng.kv_stats().ladder.items()} == sim_counters, mode
        got[mode] = losses(eng_views)
    drops, preempts, done = got["qvg"]
    assert (drops, preempts, done) == (0, 0, streams), got  # the QVG ladder loses nothing
    bf16_drops, bf16_preempts, _ = got["bf16"]
    assert bf16_drops + bf16_preempts > 0, got  # and the pressure is real
