"""Stream lifecycle: submit, admission, denoise/commit passes, finish, cancel, pause, fail."""

from __future__ import annotations

import pytest

from scheduler.config import SchedulerConfig, TenantConfig
from scheduler.core import Scheduler
from scheduler.output import StepResult
from scheduler.pages import PageAllocator
from scheduler.sim import complete, toy_layout
from scheduler.stream import StreamSpec, StreamState


def make(gpu_pages: int = 64, **cfg: object) -> tuple[Scheduler, PageAllocator]:
    alloc = PageAllocator(toy_layout(gpu_pages))
    config = SchedulerConfig(**{"max_batch_tokens": 120, "encode_policy": "pressure", **cfg})  # type: ignore[arg-type]
    return Scheduler(config, alloc, clock=lambda: 0.0), alloc


def spec(sid: int, chunks: int | None = 2, **kw: object) -> StreamSpec:
    return StreamSpec(sid, target_chunks=chunks, page_tokens=10, denoise_steps=2, **kw)  # type: ignore[arg-type]


def step(sched: Scheduler, alloc: PageAllocator):
    out = sched.schedule()
    sched.update(complete(out))
    alloc.check_invariants()
    return out


def test_stream_runs_denoise_steps_then_a_commit_per_chunk_and_finishes():
    sched, alloc = make()
    assert sched.submit(spec(1)).accepted
    seen = []
    for _ in range(6):
        out = step(sched, alloc)
        seen.append([(b.kind, b.chunk, b.step, len(b.new_pages)) for b in out.batch])
    assert seen == [
        [("denoise", 0, 0, 0)],
        [("denoise", 0, 1, 0)],
        [("commit", 0, 2, 3)],
        [("denoise", 1, 0, 0)],
        [("denoise", 1, 1, 0)],
        [("commit", 1, 2, 3)],
    ]
    ended = sched.get(1)
    assert (ended.state, ended.reason, ended.chunks) == ("finished", "completed", 2)
    assert alloc.pages_of(1) == () and not alloc.stats().pages


def test_committed_pages_appear_in_the_next_pass_page_table():
    sched, alloc = make()
    sched.submit(spec(1, chunks=3))
    commit = None
    for _ in range(4):
        out = step(sched, alloc)
        commit = out.batch[0] if out.batch[0].kind == "commit" else commit
    assert commit is not None
    assert out.batch[0].pages == commit.new_pages  # the chunk after reads what was committed
    assert all(alloc.location(p).fmt == "bf16" for p in commit.new_pages)


def test_queue_limit_rejects_with_a_reason_and_retry_after():
    sched, _ = make(max_waiting=2)
    assert sched.submit(spec(1)).accepted
    assert sched.submit(spec(2)).accepted
    answer = sched.submit(spec(3))
    assert (answer.accepted, answer.reason) == (False, "queue_full")
    assert answer.retry_after_s > 0
    assert sched.get(3) is None


def test_duplicate_and_oversized_streams_are_rejected():
    sched, _ = make(tenants={"small": TenantConfig(page_cap=8)})
    assert sched.submit(spec(1)).accepted
    assert sched.submit(spec(1)).reason == "duplicate"
    # sink 3 + window 3 + a 3-page chunk = 9 BF16 pages can never fit a cap of 8
    assert sched.submit(spec(2, tenant="small")).reason == "too_large"
    assert sched.submit(spec(3, pages_per_chunk=20)).reason == "too_large"  # > max tokens
    tiny, _ = make(gpu_pages=8)
    assert tiny.submit(spec(4)).reason == "too_large"  # nor a pool of 8


def test_cancel_frees_pages_at_once_and_reports_them():
    sched, alloc = make()
    sched.submit(spec(1, chunks=4))
    for _ in range(3):
        step(sched, alloc)
    held = alloc.pages_of(1)
    assert len(held) == 3
    assert sched.cancel(1)
    assert alloc.pages_of(1) == ()  # freed before the next step
    assert sched.get(1).state == "cancelled"
    out = sched.schedule()
    assert set(held) <= set(out.freed)
    assert (1, "cancelled") in out.ended
    assert not sched.cancel(1)


def test_cancel_of_a_waiting_stream_leaves_the_queue():
    sched, alloc = make(max_waiting=1)
    sched.submit(spec(1))
    sched.cancel(1)
    assert sched.submit(spec(2)).accepted  # the queue slot is free again
    out = step(sched, alloc)
    assert [b.stream_id for b in out.batch] == [2]


def test_idle_stream_keeps_pages_and_gets_no_compute_until_resumed():
    sched, alloc = make()
    sched.submit(spec(1, chunks=3))
    sched.submit(spec(2, chunks=3))
    for _ in range(3):
        step(sched, alloc)
    held = alloc.pages_of(1)
    sched.pause(1)
    assert sched.get(1).state is StreamState.IDLE
    for _ in range(4):
        out = step(sched, alloc)
        assert [b.stream_id for b in out.batch] == [2]
    assert alloc.pages_of(1) == held
    sched.pause(1, False)
    out = step(sched, alloc)
    assert 1 in [b.stream_id for b in out.batch]
    assert [t.event for t in sched.get(1).history].count("idle") == 1


def test_runner_failure_ends_the_stream_with_its_reason_and_frees_pages():
    sched, alloc = make()
    sched.submit(spec(1, chunks=3))
    for _ in range(3):
        step(sched, alloc)
    out = sched.schedule()
    sched.update(StepResult(out.step, failed=((1, "nan in latents"),)))
    ended = sched.get(1)
    assert (ended.state, ended.reason) == ("failed", "nan in latents")
    assert alloc.pages_of(1) == ()


def test_a_pass_not_reported_is_retried_and_its_new_pages_released():
    sched, alloc = make()
    sched.submit(spec(1))
    step(sched, alloc)
    step(sched, alloc)
    out = sched.schedule()
    assert out.batch[0].kind == "commit"
    sched.update(StepResult(out.step))  # nothing advanced
    alloc.check_invariants()
    assert alloc.pages_of(1) == ()
    again = sched.schedule()
    assert again.batch[0].kind == "commit" and set(out.batch[0].new_pages) <= set(again.freed)


def test_open_ended_stream_runs_until_closed():
    sched, alloc = make()
    sched.submit(spec(1, chunks=None))
    for _ in range(12):
        step(sched, alloc)
    assert sched.get(1).chunk == 4
    assert sched.close(1)
    assert (sched.get(1).state, sched.get(1).reason) == ("finished", "closed")
    assert alloc.pages_of(1) == ()


def test_update_for_another_step_is_refused():
    sched, _ = make()
    out = sched.schedule()
    with pytest.raises(ValueError, match="result.step"):
        sched.update(StepResult(out.step + 1))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_batch_streams": 0}, "max_batch_streams"),
        ({"low_watermark": 0.9, "high_watermark": 0.5}, "watermarks"),
        ({"rungs": frozenset({"compress"})}, "rungs"),
        ({"early_format": "bf16"}, "early_format"),
        ({"deadline_share": 1.5}, "deadline_share"),
    ],
)
def test_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SchedulerConfig(**kwargs)


def test_spec_and_tenant_errors_name_the_field():
    with pytest.raises(ValueError, match="pages_per_chunk"):
        StreamSpec(1, pages_per_chunk=0)
    with pytest.raises(ValueError, match="target_fps"):
        StreamSpec(1, target_fps=0.0)
    with pytest.raises(ValueError, match="page_cap"):
        TenantConfig(page_cap=2, page_floor=4)
