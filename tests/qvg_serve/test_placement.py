"""The router's placement policy on fake replicas: freer first, bursts spread, refusals avoided."""

from __future__ import annotations

import random
from types import SimpleNamespace

from qvg_serve.serve.placement import KVPlacement, routing_stats

MIB = 1 << 20


def replica(uid: str, free_mib: float | None, at: float = 0.0, stream_mib: float = 4):
    stats = {} if free_mib is None else {
        "free_kv_bytes": free_mib * MIB, "stream_kv_bytes": stream_mib * MIB, "at": at,
    }  # fmt: skip
    return SimpleNamespace(replica_id=SimpleNamespace(unique_id=uid), routing_stats=stats)


def place(kv: KVPlacement, replicas, n: int, avoid=()) -> list[str]:
    out = []
    for i in range(n):
        best = kv.rank(replicas, avoid)[0][0].replica_id.unique_id
        kv.placed(f"req-{len(out)}-{i}-{id(out)}", best)
        out.append(best)
    return out


def test_freer_replica_ranks_first():
    kv = KVPlacement(clock=lambda: 10.0, rng=random.Random(0))
    ranks = kv.rank([replica("a", 10), replica("b", 90)], ())
    assert [r[0].replica_id.unique_id for r in ranks] == ["b", "a"]


def test_a_burst_on_stale_stats_spreads_by_counting_its_own_placements():
    kv = KVPlacement(clock=lambda: 10.0, rng=random.Random(1))
    got = place(kv, [replica("a", 48), replica("b", 48)], 12)
    assert got.count("a") == got.count("b") == 6  # without the correction: 12 on one


def test_uneven_free_kv_fills_the_freer_one_until_level():
    kv = KVPlacement(clock=lambda: 10.0, rng=random.Random(2))
    got = place(kv, [replica("a", 16), replica("b", 48)], 12)  # 4 MiB a stream
    assert got[:8] == ["b"] * 8 and got.count("a") == 2  # 48 - 4*8 = 16: then alternate


def test_placements_before_the_stats_are_not_counted_twice():
    now = [10.0]
    kv = KVPlacement(clock=lambda: now[0], rng=random.Random(3))
    place(kv, [replica("a", 40), replica("b", 40)], 4)  # at t = 10, 2 each
    now[0] = 12.0  # new stats at t = 11 already include those streams
    fresh = [replica("a", 32, at=11), replica("b", 36, at=11)]
    assert kv.free_bytes(fresh[0]) == 32 * MIB and kv.free_bytes(fresh[1]) == 36 * MIB


def test_refusing_replicas_are_avoided_unless_all_refused():
    kv = KVPlacement(rng=random.Random(4))
    reps = [replica("a", 90), replica("b", 10), replica("c", 5)]
    for _ in range(20):
        firsts = {r[0].replica_id.unique_id for r in kv.rank(reps, ["a"])}
        assert "a" not in firsts
    assert kv.rank(reps, ["a", "b", "c"])  # every one refused: still a choice (it answers 429)


def test_replicas_without_stats_yet_are_spread_by_recent_placements():
    kv = KVPlacement(rng=random.Random(5))
    got = place(kv, [replica("a", None), replica("b", 50)], 10)
    assert got.count("a") == got.count("b") == 5


def test_routing_stats_report_free_bytes_and_a_minimal_stream():
    st = routing_stats(
        {"free_bytes": 123, "streams_that_fit": 1}, bf16_page_bytes=10, stream_pages=7
    )
    assert st["free_kv_bytes"] == 123 and st["stream_kv_bytes"] == 70 and st["at"] > 0


def test_four_replicas_forty_creates_at_once_none_gets_over_1_5x_its_share():
    # Issue 16's target, on the policy: 40 creates arrive before any replica reports again
    # (every rank reads the same stale stats), 4 equal replicas; over 200 seeded bursts no
    # replica takes more than 15 streams (1.5x its share of 10) -- the KV it is given is
    # streams x stream_kv_bytes, so the same bound holds for KV.
    worst = 0
    for seed in range(200):
        kv = KVPlacement(clock=lambda: 10.0, rng=random.Random(seed))
        reps = [replica(u, 400, at=9.0) for u in "abcd"]  # room for 100 streams each
        got = place(kv, reps, 40)
        worst = max(worst, max(got.count(u) for u in "abcd"))
    assert worst <= 15, worst


def test_a_fuller_replica_gets_proportionally_fewer_of_a_burst():
    # 4 replicas, one with a quarter of the others' free KV (400 vs 100 MiB, 4 MiB a stream):
    # 40 streams leave the three freer ones above 100 MiB, so the fuller one gets none (at
    # most 1.5x its share of the free bytes, 40/13) and the three split the burst, none over
    # 1.5x its share of 40/3.
    for seed in range(50):
        kv = KVPlacement(clock=lambda: 10.0, rng=random.Random(seed))
        reps = [replica("a", 400), replica("b", 400), replica("c", 400), replica("d", 100)]
        got = place(kv, reps, 40)
        assert got.count("d") <= 1.5 * 40 / 13, (seed, got.count("d"))
        assert max(got.count(u) for u in "abc") <= 1.5 * 40 / 3, (seed, got)
