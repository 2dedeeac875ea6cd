"""The operations sections of `AppConfig` (config.py imports them back): how the engine is
deployed on Ray Serve and how the stream store (store.py) keeps streams and their frames.

    deployment:  replicas, autoscaling, GPUs / CPUs per replica
    durability:  heartbeats, failure detection, retention, hand-over, frame memory caps
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from qvg_serve.serve.spool import SpoolConfig, default_root


class Strict(BaseModel):
    """Every settings model: unknown keys fail naming the key; values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class ActorOptions(Strict):
    """`ray_actor_options` of the engine replica: what Ray reserves for it."""

    num_gpus: float = Field(
        0.0, ge=0, description="GPUs per replica: 0 = CPU (local demo); 1 = one engine per GPU."
    )
    num_cpus: float = Field(
        1.0, ge=0, description="CPUs per replica: the engine loop and the HTTP handlers."
    )


class AutoscalingSettings(Strict):
    """Serve autoscaling of engine replicas. A replica that scales down hands its streams to the
    others in its graceful shutdown (durability.handover_timeout_s); they continue there."""

    min_replicas: int = Field(1, ge=0, description="Fewest replicas (0 = scale to zero).")
    max_replicas: int = Field(1, ge=1, description="Most replicas (one per GPU in the cluster).")
    target_ongoing_requests: float = Field(
        64.0, gt=0, description="Ongoing requests per replica Serve aims at when scaling."
    )

    @model_validator(mode="after")
    def _ordered(self) -> AutoscalingSettings:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas = {self.min_replicas} > max_replicas = {self.max_replicas}; "
                "raise max_replicas or lower min_replicas"
            )
        return self


class DeploymentSettings(Strict):
    """The Ray Serve deployment of the engine (the same fields as Serve's YAML `deployments:`)."""

    name: str = Field("QVGEngine", min_length=1, description="Serve deployment name.")
    num_replicas: int = Field(1, ge=1, description="Engine replicas (without autoscaling).")
    max_ongoing_requests: int = Field(
        256,
        ge=1,
        description="Concurrent requests per replica: every resident stream may hold an open "
        "frames connection, so this is far above Serve's default of 5.",
    )
    ray_actor_options: ActorOptions = Field(default_factory=ActorOptions)
    autoscaling_config: AutoscalingSettings | None = Field(
        None, description="Serve autoscaling; None = a fixed num_replicas."
    )

    def serve_options(self) -> dict[str, Any]:
        """Keyword arguments for `Deployment.options(...)`."""
        opts = self.model_dump(exclude={"num_replicas", "autoscaling_config"})
        if self.autoscaling_config is None:
            opts["num_replicas"] = self.num_replicas
        else:
            opts["autoscaling_config"] = self.autoscaling_config.model_dump()
        return opts


class DurabilitySettings(Strict):
    """The stream store (serve/store.py): how fast a dead replica's streams move, how long an
    ended stream's frames stay readable, and how much RAM and disk they may take meanwhile."""

    heartbeat_s: float = Field(
        0.5, gt=0, description="Seconds between an engine replica's heartbeats to the store."
    )
    dead_after_s: float = Field(
        5.0,
        gt=0,
        description="A replica silent this long is taken for dead and its streams re-homed: "
        "10 beats, so a long engine step or a GC pause does not move streams.",
    )
    retention_s: float = Field(
        600.0,
        ge=0,
        description="Seconds an ended stream's frames (and video.mp4) stay readable; then its "
        "objects are released from the object store and its id answers 404.",
    )
    handover_timeout_s: float = Field(
        20.0,
        gt=0,
        description="Serve's graceful_shutdown_timeout_s of an engine replica: a replica being "
        "replaced hands its streams over within it (the handover itself takes well under 1 s).",
    )

    frames_ram_mib: float = Field(
        1024.0,
        ge=0,
        description="Object-store memory (MiB) the store may hold for ended streams' frames "
        "(JPEGs, video.mp4); beyond it the oldest ended streams move to frames_dir and are "
        "read from there. Live streams' frames are never moved. 0 = each stream moves as it "
        "ends.",
    )
    frames_disk_gib: float = Field(
        8.0,
        ge=0,
        description="Disk (GiB) under frames_dir for ended streams' frames; beyond it the "
        "oldest are deleted (their id answers 410). Keep it under the filesystem's free space "
        "(the chart's tmpSize when frames_dir is under /tmp). 0 = no disk: past the RAM cap "
        "the oldest ended streams are deleted.",
    )
    frames_dir: str | None = Field(
        None,
        min_length=1,
        description="Directory, on the store's (head) node, for ended streams' frames; each app "
        "gets a folder inside, cleared when the store starts. None = <system temp dir>/"
        "qvg-serve-frames.",
    )

    def spool_config(self, app: str) -> SpoolConfig:
        """The store's frame budget (spool.py) for Serve application `app`."""
        return SpoolConfig(
            root=default_root(app, self.frames_dir),
            ram_bytes=int(self.frames_ram_mib * (1 << 20)),
            disk_bytes=int(self.frames_disk_gib * (1 << 30)),
        )

    @model_validator(mode="after")
    def _beats_before_death(self) -> DurabilitySettings:
        if self.dead_after_s < 2 * self.heartbeat_s:
            raise ValueError(
                f"dead_after_s = {self.dead_after_s} < 2 x heartbeat_s = {self.heartbeat_s}: "
                "one late beat would move every stream; raise dead_after_s"
            )
        return self
