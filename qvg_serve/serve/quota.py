"""Tenant page caps across engine replicas: the stream store leases each replica its share.

A tenant's `page_cap` is cluster-wide: at no instant do its GPU pages, summed over every
engine replica, exceed it. Each replica's scheduler holds a capped tenant to
min(page_cap, lease) pages (scheduler/tenants.py); the stream store (one actor per app: every
lease passes through one place, so no burst of creates on several ingresses or replicas can
race past it) hands the leases out on the heartbeats:

    replica beat k:   {"seq": s applied, "leases": {t: n} applied,
                       "tenants": {t: [held, wanted, cap]}}   (the engine thread's last figures)
    store:            committed(r, t) = max(the lease r applied, every lease sent to r after it)
                      new(r, t) = min(wanted, cap - sum of committed(r', t) over r' != r)
    reply:            {"seq": s', "leases": {t: new}}  -> applied by r's engine thread before
                      its next step; a capped tenant without a lease gets 0 pages there

Invariant: sum over r of committed(r, t) <= cap(t). A replica applies leases in order, so a
lease sent but not yet applied is counted until the replica reports a later one; a lease
never drops below what its replica holds (held <= applied <= committed <= the room left by
the others), so no replica has to give pages back. A stream's pages grow within its
replica's lease: new streams and next chunks wait (the queue, then the ladder's rungs on the
tenant's own pages, as for a cap on one replica) until a beat moves lease from where the
tenant no longer wants it: a release takes effect one beat after the beat that shrank it.

Not bounded: a cap lowered by a redeploy while pages are held above it (they shrink as the
tenant's streams need pages), and a replica taken for dead that was only slow (its lease is
given to others; when it beats again it is counted at what it reports and gets 0 more).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class _Replica:
    seq: int = 0
    """The last lease set sent to this replica."""
    applied: dict[str, int] = field(default_factory=dict)
    sent: list[tuple[int, dict[str, int]]] = field(default_factory=list)
    """Lease sets sent after the one it applied, (seq, leases)."""
    held: dict[str, int] = field(default_factory=dict)

    def committed(self, tenant: str) -> int:
        return max([self.applied.get(tenant, 0)] + [s.get(tenant, 0) for _, s in self.sent])


class Leases:
    """The store's lease book (no Ray here: store.py calls `beat` from `heartbeat`)."""

    def __init__(self) -> None:
        self.replicas: dict[str, _Replica] = {}
        self.peak: dict[str, int] = {}
        """Per tenant, the largest sum of the replicas' reported held pages seen at a beat."""

    def beat(self, replica: str, report: dict) -> dict:
        """`replica`'s report (see the module docstring) -> its new lease set."""
        seq = report.get("seq", 0)
        # a replica new to this book (the store restarted, or it was taken for dead) goes on
        # from the lease set it applied, so it takes the next one as newer
        r = self.replicas.setdefault(replica, _Replica(seq=seq))
        r.applied = dict(report.get("leases", {}))
        r.sent = [(s, got) for s, got in r.sent if s > seq]
        tenants = report.get("tenants", {})
        r.held = {t: held for t, (held, _, _) in tenants.items()}
        new = {}
        for t, (_, wanted, cap) in tenants.items():
            others = sum(o.committed(t) for name, o in self.replicas.items() if name != replica)
            new[t] = max(0, min(wanted, cap - others))
        r.seq += 1
        r.sent.append((r.seq, new))
        for t in tenants:
            self.peak[t] = max(self.peak.get(t, 0), self.held(t))
        return {"seq": r.seq, "leases": new}

    def held(self, tenant: str) -> int:
        """The tenant's GPU pages by the replicas' last reports (each <= its lease)."""
        return sum(r.held.get(tenant, 0) for r in self.replicas.values())

    def forget(self, replica: str) -> None:
        """A replica gone (dead, or handed over on a drain): its lease is free again."""
        self.replicas.pop(replica, None)

    def stats(self) -> dict[str, dict]:
        """Per capped tenant: held (by the last reports), committed lease, peak held."""
        names = {t for r in self.replicas.values() for t in r.held} | set(self.peak)
        return {
            t: {
                "held": self.held(t),
                "leased": sum(r.committed(t) for r in self.replicas.values()),
                "peak_held": self.peak.get(t, 0),
                "by_replica": {n: r.held.get(t, 0) for n, r in self.replicas.items()},
            }
            for t in sorted(names)
        }
