"""Serve request router of the engine deployment: a request for a stream goes to its replica.

Built on Ray Serve's public `ray.serve.request_router` API only. The ingress passes
the stream's current home (the stream store's answer, store.py) as the `replica=` keyword of
every per-stream call. This router, running inside the ingress's DeploymentHandle,
then offers Serve only that replica:

    pending call with replica="ab12cd34"  ->  [[replica ab12cd34]]     (waits while it is busy)
    replica "ab12cd34" is gone            ->  [[every replica]]        (answers None: not mine;
                                              the ingress asks the store again: recovering)
    no replica= (create, capacity, ...)   ->  [[two random replicas]]  (power of two choices:
                                              Serve probes both and takes the shorter queue)
    roster=[] (fanout.py)                 ->  roster=[every replica id], [[every replica]]
    avoid=[...] (create, placement.py)    ->  [[freer of two], [the other]]: two sampled
                                              replicas not in avoid, ranked by free KV

Waiting on a busy owner instead of falling back is the point: multiplexed-model routing (the
other built-in affinity) falls back to any replica after a timeout, which for a stream would be
a wrong answer, not a slow one.
"""

from __future__ import annotations

import random

from ray.serve.request_router import FIFOMixin, PendingRequest, RequestRouter, RunningReplica

from qvg_serve.serve.placement import KVPlacement
from qvg_serve.serve.stream_ids import AVOID_KWARG, OWNER_KWARG, ROSTER_KWARG


class StreamRouter(FIFOMixin, RequestRouter):
    @property
    def _kv(self) -> KVPlacement:  # lazily: Serve builds routers itself (and cloudpickles
        if "_placement" not in vars(self):  # the class, so no cached_property: it holds a lock)
            self._placement = KVPlacement()
        return self._placement

    def on_request_routed(self, pending_request: PendingRequest, replica_id, result) -> None:
        if AVOID_KWARG in pending_request.kwargs:  # where Serve really sent the create
            self._kv.placed(_request_id(pending_request), replica_id.unique_id)

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        kwargs = {} if pending_request is None else pending_request.kwargs
        if ROSTER_KWARG in kwargs:  # fanout.py: the answer is every replica's id
            kwargs[ROSTER_KWARG] = sorted(r.replica_id.unique_id for r in candidate_replicas)
            return [list(candidate_replicas)]
        if AVOID_KWARG in kwargs and pending_request is not None:  # a create (placement.py)
            ranks = self._kv.rank(candidate_replicas, kwargs[AVOID_KWARG] or ())
            # counted now, not when routed: a burst's creates are ranked concurrently
            self._kv.placed(_request_id(pending_request), ranks[0][0].replica_id.unique_id)
            return ranks
        owner = kwargs.get(OWNER_KWARG)
        if owner is None:
            return [random.sample(candidate_replicas, min(2, len(candidate_replicas)))]
        mine = [r for r in candidate_replicas if r.replica_id.unique_id == owner]
        return [mine] if mine else [list(candidate_replicas)]


def _request_id(pending: PendingRequest) -> str:
    return pending.metadata.internal_request_id
