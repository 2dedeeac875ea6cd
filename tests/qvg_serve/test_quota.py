"""Cluster-wide tenant page caps: the store's lease book (serve/quota.py), no Ray.

Replicas are modelled as the scheduler behaves: a tenant's pages here grow only up to the
lease applied here (min(page_cap, lease), scheduler/tenants.py), leases arrive on beat
replies that may be lost, and are applied later, in order.
"""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from qvg_serve.serve.quota import Leases

CAP = 12


class Replica:
    def __init__(self, name: str) -> None:
        self.name, self.held, self.extra = name, 0, CAP  # wants pages from the start
        self.applied: tuple[int, dict[str, int]] = (0, {})
        self.offered: tuple[int, dict[str, int]] | None = None

    def report(self) -> dict:
        seq, leases = self.applied
        return {"seq": seq, "leases": leases,
                "tenants": {"a": [self.held, min(CAP, self.held + self.extra), CAP]}}  # fmt: skip

    def beat(self, book: Leases, lost: bool = False) -> None:
        got = book.beat(self.name, self.report())
        if not lost:  # a reply lost on the way (timeout) is never applied
            self.offered = (got["seq"], got["leases"])

    def apply(self) -> None:
        if self.offered is not None and self.offered[0] > self.applied[0]:
            self.applied = self.offered

    def lease(self) -> int:
        return self.applied[1].get("a", 0)

    def grow(self, n: int) -> None:  # the scheduler: new pages only within the lease
        self.held = max(self.held, min(self.held + n, self.lease()))


OPS = st.lists(
    st.tuples(
        st.sampled_from(["beat", "lost", "apply", "grow", "free", "want"]),
        st.integers(0, 2),
        st.integers(0, CAP),
    ),
    max_size=60,
)


@settings(max_examples=500, deadline=None)
@given(OPS)
@example(
    [
        ("beat", 0, 0),
        ("beat", 1, 0),
        ("apply", 0, 0),
        ("apply", 1, 0),
        ("grow", 0, 12),
        ("grow", 1, 12),
    ]
)  # two grants before either applies: both must be counted
def test_summed_pages_never_exceed_the_cap_whatever_the_order_of_beats(ops):
    book, reps = Leases(), [Replica(n) for n in "xyz"]
    for op, i, n in ops:
        r = reps[i]
        if op in ("beat", "lost"):
            r.beat(book, lost=op == "lost")
        elif op == "apply":
            r.apply()
        elif op == "grow":
            r.grow(n)
        elif op == "free":
            r.held = max(0, r.held - n)
        else:
            r.extra = n
        assert sum(x.held for x in reps) <= CAP  # at every instant, not just at beats
        assert book.stats()["a"]["leased"] <= CAP if "a" in book.stats() else True
        assert book.held("a") <= CAP


def test_a_lease_moves_to_where_the_tenant_wants_pages_one_beat_after_its_release():
    book, x, y = Leases(), Replica("x"), Replica("y")
    x.extra = CAP
    x.beat(book), x.apply(), x.grow(CAP), x.beat(book)
    assert x.held == CAP
    y.extra = 6
    y.beat(book), y.apply(), y.grow(6)
    assert y.held == 0  # x holds the whole cap
    x.held, x.extra = 0, 0  # x's streams ended
    x.beat(book), y.beat(book), y.apply(), y.grow(6)
    assert y.held == 0  # x was told to release, but has not applied it yet
    x.apply(), x.beat(book)  # x now reports the release applied
    y.beat(book), y.apply(), y.grow(6)
    assert y.held == 6 and book.stats()["a"]["peak_held"] == CAP


def test_a_lost_reply_is_counted_until_a_later_lease_is_applied():
    book, x, y = Leases(), Replica("x"), Replica("y")
    x.extra = CAP
    x.beat(book, lost=True)  # granted CAP, but x never sees (so never applies) it
    y.extra = CAP
    y.beat(book)
    assert y.offered[1]["a"] == 0  # the lost grant is still counted against the cap
    x.extra = 0
    x.beat(book)  # x reports seq 0 applied: the lost grant is superseded
    x.apply(), x.beat(book)
    y.beat(book)
    assert y.offered[1]["a"] == CAP


def test_a_forgotten_replica_frees_its_lease_and_uncapped_tenants_get_none():
    book, x = Leases(), Replica("x")
    x.extra = CAP
    x.beat(book), x.apply()
    assert x.lease() == CAP
    book.forget("x")
    got = book.beat("y", {"tenants": {"a": [0, 5, CAP]}})
    assert got["leases"] == {"a": 5}
    x.extra = 0
    x.beat(book), x.apply()  # x beats again (it was only slow): its next lease set is newer
    assert x.applied[0] > 1 and x.lease() == 0
    assert book.beat("z", {})["leases"] == {}  # a replica with no capped tenant: no leases
