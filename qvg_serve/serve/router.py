"""Serve request router of the engine deployment: a request for a stream goes to its replica.

A stream id is "<replica unique id>-<n>" (the replica that created it names itself); the
ingress passes that replica id as the `replica=` keyword of every per-stream call. This
router, running inside the ingress's DeploymentHandle, then offers Serve only that replica:

    pending call with replica="ab12cd34"  ->  [[replica ab12cd34]]     (waits while it is busy)
    replica "ab12cd34" is gone            ->  [[every replica]]        (answers 404: not mine)
    no replica= (create, capacity, ...)   ->  power of two choices     (Serve's default)

Waiting on a busy owner instead of falling back is the point: multiplexed-model routing (the
other built-in affinity) falls back to any replica after a timeout, which for a stream would be
a wrong answer, not a slow one.
"""

from __future__ import annotations

from ray.serve._private.request_router.pow_2_router import PowerOfTwoChoicesRequestRouter

OWNER_KWARG = "replica"


class StreamRouter(PowerOfTwoChoicesRequestRouter):
    async def choose_replicas(self, candidate_replicas, pending_request=None):
        owner = None if pending_request is None else pending_request.kwargs.get(OWNER_KWARG)
        if owner is None:
            return await super().choose_replicas(candidate_replicas, pending_request)
        mine = [r for r in candidate_replicas if r.replica_id.unique_id == owner]
        return [mine] if mine else [list(candidate_replicas)]
