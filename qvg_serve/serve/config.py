"""The one configuration model of the app: what `build_app(args)` receives from Serve's YAML.

    engine:      EngineConfig fields (model, KV arena, formats)      -> .engine_config()
    scheduler:   SchedulerConfig fields, tenants by name             -> .scheduler_config()
    server:      HTTP bind, auth, API-key source, request limits
    deployment:  Ray Serve deployment options (replicas, GPUs per replica)
    durability:  the stream store: heartbeats, failure detection, retention, frame memory caps

The deployment and durability sections live in ops_config.py (imported back here).

Every model forbids unknown keys, so a typo fails at startup naming the key instead of being
dropped. The engine and scheduler defaults are read from their frozen dataclasses (the
dataclass is the one place a default lives); the serving-only defaults live here. The
dataclasses' own checks run during validation, so a bad value fails with the field's path.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import textwrap
from collections.abc import Mapping
from functools import cache
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from qvg_serve.engine.config import EngineConfig
from qvg_serve.serve.ops_config import ActorOptions as ActorOptions  # re-exported sections
from qvg_serve.serve.ops_config import AutoscalingSettings as AutoscalingSettings
from qvg_serve.serve.ops_config import DeploymentSettings, DurabilitySettings
from qvg_serve.serve.ops_config import Strict as _Strict
from scheduler.config import RUNGS, Priority, SchedulerConfig, TenantConfig

LOOPBACK = ("127.0.0.1", "localhost", "::1")
"""Hosts only this machine reaches: auth="auto" stays off (the local demo). Any other host
(0.0.0.0, ::, an interface address) is reachable from the network: auth="auto" turns on."""


@cache
def _attribute_docs(cls: type) -> dict[str, str]:
    """Field name -> the docstring under it in `cls`'s source (the dataclasses document each
    field that way); exported as the JSON schema's descriptions so docs are not retyped."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for stmt, nxt in zip(body, body[1:], strict=False):
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
                docs[stmt.target.id] = " ".join(str(nxt.value.value).split())
    return docs


def _from(cls: type, name: str, **constraints: Any) -> Any:
    """A pydantic Field whose default and description are the dataclass field's own."""
    field = {f.name: f for f in dataclasses.fields(cls)}[name]
    doc = _attribute_docs(cls).get(name)
    if field.default_factory is not dataclasses.MISSING:
        return Field(default_factory=field.default_factory, description=doc, **constraints)
    return Field(default=field.default, description=doc, **constraints)


def _priority_class(key: Any) -> Any:
    """Priority "high" / "2" / 2 -> 2; anything else is left for pydantic to reject by name."""
    if isinstance(key, str):
        key = {p.name.lower(): int(p) for p in Priority}.get(key.lower(), key)
    return int(key) if isinstance(key, str) and key.isdigit() else key


class EngineSettings(_Strict):
    """`EngineConfig`, field for field."""

    model: str = _from(EngineConfig, "model", min_length=1)
    weights: str | None = _from(EngineConfig, "weights")
    device: str = _from(EngineConfig, "device", min_length=1)
    dtype: Literal["auto", "bfloat16", "float32"] = _from(EngineConfig, "dtype")
    kv_cache_memory_bytes: int | None = _from(EngineConfig, "kv_cache_memory_bytes", gt=0)
    gpu_memory_fraction: float = _from(EngineConfig, "gpu_memory_fraction", gt=0, le=1)
    cpu_offload_bytes: int = _from(EngineConfig, "cpu_offload_bytes", ge=0)
    formats: tuple[str, ...] = _from(EngineConfig, "formats", min_length=1)
    centroids: int | None = _from(EngineConfig, "centroids", ge=1, le=256)
    max_batch_kv_tokens: int | None = _from(EngineConfig, "max_batch_kv_tokens", gt=0)
    read_ahead: bool = _from(EngineConfig, "read_ahead")
    seed: int = _from(EngineConfig, "seed", ge=0)
    overlap_encodes: bool = _from(EngineConfig, "overlap_encodes")

    @model_validator(mode="after")
    def _builds(self) -> EngineSettings:
        self.build()  # the dataclass's own checks; its ValueError names the field
        return self

    def build(self) -> EngineConfig:
        return EngineConfig(**self.model_dump())


class TenantSettings(_Strict):
    """`TenantConfig`, field for field."""

    weight: float = _from(TenantConfig, "weight", gt=0)
    page_cap: int | None = _from(TenantConfig, "page_cap", ge=1)
    page_floor: int = _from(TenantConfig, "page_floor", ge=0)

    @model_validator(mode="after")
    def _builds(self) -> TenantSettings:
        self.build()
        return self

    def build(self) -> TenantConfig:
        return TenantConfig(**self.model_dump())


class SchedulerSettings(_Strict):
    """`SchedulerConfig`, field for field; tenants by name. Priority weights by class name or
    number (`{"high": 8.0}` or `{2: 8.0}`), merged over the defaults (the classes not given
    keep theirs)."""

    max_batch_streams: int = _from(SchedulerConfig, "max_batch_streams", ge=1)
    max_batch_tokens: int = _from(SchedulerConfig, "max_batch_tokens", ge=1)
    max_waiting: int = _from(SchedulerConfig, "max_waiting", ge=0)
    sink_pages: int = _from(SchedulerConfig, "sink_pages", ge=0)
    window_pages: int = _from(SchedulerConfig, "window_pages", ge=0)
    min_span_pages: int = _from(SchedulerConfig, "min_span_pages", ge=1)
    max_span_pages: int = _from(SchedulerConfig, "max_span_pages", ge=1)
    max_plans_per_step: int = _from(SchedulerConfig, "max_plans_per_step", ge=1)
    max_blocked_steps: int = _from(SchedulerConfig, "max_blocked_steps", ge=1)
    encode_policy: Literal["eager", "pressure"] = _from(SchedulerConfig, "encode_policy")
    eager_span_pages: int = _from(SchedulerConfig, "eager_span_pages", ge=1)
    eager_plans_per_step: int = _from(SchedulerConfig, "eager_plans_per_step", ge=0)
    denoise_unreserved: bool = _from(SchedulerConfig, "denoise_unreserved")
    admit_headroom: float = _from(SchedulerConfig, "admit_headroom", gt=0, le=4)
    early_format: str = _from(SchedulerConfig, "early_format")
    deep_format: str = _from(SchedulerConfig, "deep_format")
    high_watermark: float = _from(SchedulerConfig, "high_watermark", gt=0, le=1)
    low_watermark: float = _from(SchedulerConfig, "low_watermark", gt=0, le=1)
    rungs: frozenset[Literal[tuple(r.value for r in RUNGS)]] = _from(  # type: ignore[valid-type]
        SchedulerConfig, "rungs"
    )
    retry_after_s: float = _from(SchedulerConfig, "retry_after_s", gt=0)
    deadline_share: float = _from(SchedulerConfig, "deadline_share", ge=0, le=1)
    deadline_horizon_s: float = _from(SchedulerConfig, "deadline_horizon_s", ge=0)
    max_ladder_candidates: int = _from(SchedulerConfig, "max_ladder_candidates", ge=1)
    priority_weights: dict[int, float] = _from(SchedulerConfig, "priority_weights")
    tenants: dict[str, TenantSettings] = _from(SchedulerConfig, "tenants")

    @field_validator("priority_weights", mode="before")
    @classmethod
    def _priority_names(cls, value: Any) -> Any:
        if not isinstance(value, Mapping):
            return value
        defaults = {int(k): v for k, v in SchedulerConfig().priority_weights.items()}
        return {**defaults, **{_priority_class(k): v for k, v in value.items()}}

    @model_validator(mode="after")
    def _builds(self) -> SchedulerSettings:
        self.build()
        return self

    def build(self) -> SchedulerConfig:
        fields = {name: getattr(self, name) for name in type(self).model_fields}
        fields["tenants"] = {name: t.build() for name, t in self.tenants.items()}
        fields["rungs"] = frozenset(self.rungs)
        return SchedulerConfig(**fields)


class ServerSettings(_Strict):
    """HTTP front: where it listens, who may call it, how big a request may be."""

    host: str = Field("127.0.0.1", description="Bind address; 0.0.0.0 serves the network.")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port (Ray Serve's default).")
    auth: Literal["auto"] | bool = Field(
        "auto",
        description='API-key auth: "auto" = on unless the host is loopback and no key is set '
        "(off for the local demo; on when serving 0.0.0.0 or when keys are given), or true / "
        "false. On with no key at all is a startup error (serve/keys.py).",
    )
    api_keys_env: str | None = Field(
        "QVG_API_KEYS",
        min_length=1,
        description='Environment variable holding "key:tenant,key:tenant" pairs (from a '
        "Kubernetes Secret): keys never sit in the serve config, which the Ray dashboard shows.",
    )
    api_keys_file_env: str | None = Field(
        "QVG_API_KEYS_FILE",
        min_length=1,
        description="Environment variable holding the path of a keys file (same pairs; e.g. a "
        "mounted Secret): re-read when it changes, so keys rotate without a restart.",
    )
    api_keys_reload_s: float = Field(
        5.0,
        gt=0,
        description="How often (at most) the keys file's mtime is checked: one stat per period "
        "per ingress, and a rotated key works within this many seconds.",
    )
    create_tries: int = Field(
        3,
        ge=1,
        description="Replicas a create may try when one refuses for memory or queue "
        "(kv_pressure / queue_full) before the client gets the 429: capped by the replica "
        "count; each try is one engine call, so a refusal costs little.",
    )
    drain_timeout_s: float = Field(
        30.0,
        ge=0,
        description="On SIGTERM / SIGINT: how long new streams get 503 while live ones finish "
        "before Serve and Ray stop (Kubernetes' default grace period is 30 s; set the pod's "
        "terminationGracePeriodSeconds above this).",
    )
    max_body_bytes: int = Field(
        64 << 10,
        ge=1024,
        description="Largest request body (bytes): prompts and actions are small; a bigger "
        "body is a client mistake answered 413, not memory for one client to take.",
    )
    max_frames_per_stream: int = Field(
        960,
        ge=1,
        description="Most frames one stream may ask for: one minute at 16 fps, the long-video "
        "length AR models are shown at; bounds one stream's share of the pool.",
    )
    max_viewers_per_tenant: int = Field(
        64,
        ge=1,
        description="Open frames connections (/frames, the page's /v1/feed) one tenant may "
        "hold on one ingress replica; beyond it 429 too_many_viewers + Retry-After. Keeps one "
        "tenant's viewers from taking the ingress's request slots from everyone else.",
    )

    metrics_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Per-replica Prometheus port: each engine replica serves its own registry "
        "there, so Prometheus scrapes every replica (GET /metrics through Serve's proxy reaches "
        "one replica per scrape). None = no extra port (local runs).",
    )

    session_secret_env: str | None = Field(
        "QVG_SESSION_SECRET",
        min_length=1,
        description="Environment variable holding the secret that signs /ui session cookies "
        "(HMAC-SHA256). Unset or empty = a random secret per ingress process: sessions end on a "
        "restart and do not carry between ingress replicas; set it when running several.",
    )
    session_ttl_s: int = Field(
        8 * 3600,
        ge=60,
        le=30 * 24 * 3600,
        description="Lifetime (s) of a /ui session cookie: a working day, after which the page "
        "asks for the key again.",
    )
    cors_origins: tuple[str, ...] = Field(
        (),
        description="Origins allowed to call the API from a browser script on another site "
        '(e.g. ["https://dash.example.com"]); empty = CORS off (same-origin only, /ui needs '
        "none). Such callers send the key in a header: cookies are never honoured cross-site.",
    )

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for origin in value:
            if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
                raise ValueError(
                    f"cors_origins: {origin!r} is not an origin; write scheme://host[:port] "
                    'with no path (e.g. "https://dash.example.com"), or "*"'
                )
        return value

    def auth_enabled(self, keys_set: bool = False) -> bool:
        """The resolved auth switch: "auto" is on for a host that is not loopback, or when
        `keys_set` (serve/keys.py's `resolve_auth` checks the key sources)."""
        if isinstance(self.auth, bool):
            return self.auth
        return self.host not in LOOPBACK or keys_set

    def api_keys(self, environ: Mapping[str, str]) -> dict[str, str]:
        """API key -> tenant, parsed from `environ[api_keys_env]` (empty when unset)."""
        if self.api_keys_env is None:
            return {}
        return parse_api_keys(environ.get(self.api_keys_env, ""), self.api_keys_env)


class AppConfig(_Strict):
    """Everything `build_app(args)` is configured by; every default lives here or in the
    dataclasses it builds."""

    engine: EngineSettings = Field(default_factory=EngineSettings)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    deployment: DeploymentSettings = Field(default_factory=DeploymentSettings)
    durability: DurabilitySettings = Field(default_factory=DurabilitySettings)

    @model_validator(mode="after")
    def _formats_held(self) -> AppConfig:
        for name in ("early_format", "deep_format"):
            fmt = getattr(self.scheduler, name)
            if fmt not in self.engine.formats:
                raise ValueError(
                    f"scheduler.{name} = {fmt!r} is not in engine.formats "
                    f"{list(self.engine.formats)}; add it there or pick one of them"
                )
        return self

    @classmethod
    def from_args(cls, args: Mapping[str, Any] | None = None) -> AppConfig:
        """Validate Serve's `args:` (a dict from YAML/JSON); raises pydantic's ValidationError
        (a ValueError) whose message gives each bad field's path, e.g. `engine.seed`."""
        return cls.model_validate(dict(args or {}))

    def engine_config(self) -> EngineConfig:
        return self.engine.build()

    def scheduler_config(self) -> SchedulerConfig:
        return self.scheduler.build()

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        """JSON schema of `args:` (for docs, editors and the Helm chart's values)."""
        return cls.model_json_schema()


def parse_api_keys(text: str, source: str = "api keys") -> dict[str, str]:
    """`"key:tenant,key:tenant"` -> {key: tenant}; ValueError naming `source` on a bad pair.
    Whitespace around pairs is ignored; the key text itself is never put in the message."""
    table: dict[str, str] = {}
    for n, pair in enumerate(p.strip() for p in text.split(",")):
        if not pair:
            continue
        key, sep, tenant = pair.rpartition(":")
        if not sep or not key.strip() or not tenant.strip():
            raise ValueError(f"{source}: pair #{n + 1} is not 'key:tenant'")
        if key.strip() in table:
            raise ValueError(f"{source}: pair #{n + 1} repeats an earlier key")
        table[key.strip()] = tenant.strip()
    return table
