"""The Ray Serve application: `serve run qvg_serve.serve.app:build_app` (see serve_config.yaml).

    HTTP --> Serve proxy --> QVGIngress (FastAPI, CPU, stateless: auth, validation, errors)
                                  |  DeploymentHandle + StreamRouter (routing.py)
                                  v
                             QVGEngine replica 1..N  (deployment.name; one per GPU:
                               Engine + engine thread + heartbeat + Metrics)
                             StreamStore (store.py, head node): durable state, frames

Where a stream lives, and why this layout. A stream's KV pages, latents and frames are in one
replica's memory, so every request for it must reach that replica. The replica that creates a
stream names itself in the id ("<replica unique id>-<n>"); the ingress passes that name with
every per-stream call and a custom Serve request router (`StreamRouter`) offers Serve only that
replica. Alternatives considered:
  - Serve's multiplexed-model-id routing: affinity is best effort. When the owner is busy
    (max_ongoing_requests: open frame streams count) or its model-id report lags, Serve falls
    back to another replica, which does not have the stream: a wrong answer, not a slow one.
  - N single-replica deployments and routing by index in the ingress: strict, but it breaks
    Serve autoscaling and the chart's one `deployments:` entry (deployment.name), and a
    config change renames deployments.
The router keeps one engine deployment (autoscaling, `num_replicas`, `ray_actor_options` all
apply as in the chart) and waits on a busy owner rather than falling back. Where a stream
lives is the stream store's answer (store.py): it keeps every stream's durable state off the
replicas and re-homes the streams of a replica that dies or drains; the ingress asks it before
every per-stream call and reads frames from it (delivery.py), never from a replica.

The engine loop is a thread inside each replica (engine_loop.py): HTTP handlers only await
futures; chunks go to the store from the replica's encoder thread (durable.py).
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from ray import serve
from ray.serve.config import RequestRouterConfig

from qvg_serve.serve import fanout
from qvg_serve.serve.config import AppConfig
from qvg_serve.serve.drain import Draining
from qvg_serve.serve.replica import EngineReplica
from qvg_serve.serve.store import get_store

INGRESS_NAME = "QVGIngress"
ROUTING_STATS_PERIOD_S = 1.0
"""How often each engine replica reports its free KV to the routers (placement.py): one cheap
engine-thread command per second; Serve's default of 10 s is long against a burst."""
INGRESS_MAX_ONGOING = 4096  # every open frames connection holds one; the ingress only relays


@serve.deployment(
    name=INGRESS_NAME, max_ongoing_requests=INGRESS_MAX_ONGOING, ray_actor_options={"num_cpus": 0}
)
@serve.ingress()
class QVGIngress:
    """Stateless HTTP front; the FastAPI app is built in the replica (it holds the handle)."""

    def __init__(self, args: dict[str, Any], engine) -> None:
        self.cfg, self.engine = AppConfig.from_args(args), engine
        self.draining = Draining()
        dur = self.cfg.durability
        app = serve.get_replica_context().app_name
        self.store = get_store(
            app, dur.heartbeat_s, dur.dead_after_s, dur.retention_s, dur.spool_config(app)
        )

    def __serve_build_asgi_app__(self):
        from qvg_serve.serve.api import build_api

        return build_api(self.cfg, self.engine, self.store, drain=self.draining)

    async def drain(self) -> None:
        """Stop admitting: creates answer 503 + Retry-After from now on (drain.py)."""
        self.draining.on = True

    async def live(self) -> int:
        """Live streams over every engine replica (fanout.py) + open frames connections."""
        caps = await fanout.each(self.engine, "capacity")
        live = sum(c["live_streams"] for c in caps)  # waiting streams are among them
        return live + self.draining.relays  # and viewers still reading their last frames


def build_app(args: dict[str, Any] | None = None) -> serve.Application:
    """Serve application builder; `args` is `AppConfig` (unknown or bad keys fail by path)."""
    try:
        cfg = AppConfig.from_args(args)
    except ValidationError as exc:
        raise ValueError(f"qvg-serve config (build_app args) is invalid:\n{exc}") from None
    plain = cfg.model_dump(mode="json")
    # What each deployment is constructed with: a change of these replaces its replicas. The
    # scheduler's tunables travel as user_config (reconfigure() in place), the deployment's
    # settings as Serve options (replica count, autoscaling, max_ongoing_requests: in place).
    actor = plain["deployment"]["ray_actor_options"]
    engine_args = {**_sections(plain, "engine", "server", "durability"),
                   "deployment": {"ray_actor_options": actor}}  # fmt: skip
    ingress_args = _sections(plain, "server", "durability")
    router = RequestRouterConfig(
        request_router_class="qvg_serve.serve.router:StreamRouter",
        request_routing_stats_period_s=ROUTING_STATS_PERIOD_S,
    )
    engine = serve.deployment(EngineReplica).options(
        **cfg.deployment.serve_options(),
        request_router_config=router,
        health_check_period_s=10,
        graceful_shutdown_timeout_s=cfg.durability.handover_timeout_s,
        user_config={"scheduler": plain["scheduler"]},
    )
    return QVGIngress.bind(ingress_args, engine.bind(engine_args))


def _sections(plain: dict[str, Any], *names: str) -> dict[str, Any]:
    return {name: plain[name] for name in names}
