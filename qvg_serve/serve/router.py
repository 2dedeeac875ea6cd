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

Waiting on a busy owner instead of falling back is the point: multiplexed-model routing (the
other built-in affinity) falls back to any replica after a timeout, which for a stream would be
a wrong answer, not a slow one.
"""

from __future__ import annotations

import random

from ray.serve.request_router import FIFOMixin, PendingRequest, RequestRouter, RunningReplica

from qvg_serve.serve.stream_ids import OWNER_KWARG


class StreamRouter(FIFOMixin, RequestRouter):
    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        owner = None if pending_request is None else pending_request.kwargs.get(OWNER_KWARG)
        if owner is None:
            return [random.sample(candidate_replicas, min(2, len(candidate_replicas)))]
        mine = [r for r in candidate_replicas if r.replica_id.unique_id == owner]
        return [mine] if mine else [list(candidate_replicas)]
