"""Request and response bodies of the HTTP API (pydantic v2, unknown fields rejected)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from scheduler.config import Priority

PRIORITIES = {p.name.lower(): int(p) for p in Priority}
MAX_PROMPT_CHARS = 2000  # the text encoder reads a few hundred tokens; more is a mistake


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CreateStream(_Body):
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS, description="Text prompt.")
    frames: int = Field(
        48, ge=1, description="Video frames to generate (<= the server's max_frames_per_stream)."
    )
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Noise seed (same seed, same video).")
    priority: Literal["low", "normal", "high"] = Field(
        "normal", description="Scheduling class: higher wins batch slots and memory."
    )
    target_fps: float | None = Field(
        None,
        gt=0,
        le=240,
        description="Real-time rate the client must receive; None = as fast as the batch allows.",
    )


class StreamUrls(_Body):
    status: str
    frames: str
    sse: str
    video: str
    actions: str


class Created(_Body):
    id: str
    urls: StreamUrls


class Action(_Body):
    prompt: str = Field(
        min_length=1,
        max_length=MAX_PROMPT_CHARS,
        description="New prompt, applied from the next chunk boundary.",
    )


class ActionResult(_Body):
    id: str
    applied: bool
    detail: str


class HistoryEntry(_Body):
    step: int
    event: str
    state: str
    detail: str


class StreamStatus(_Body):
    id: str
    prompt: str
    state: str
    frames_done: int
    frames_wanted: int
    chunks_done: int
    pages: dict[str, dict[str, int]] = Field(description="format -> tier -> pages held")
    bytes: dict[str, dict[str, int]] = Field(description="format -> tier -> bytes held")
    degraded: bool
    preemptions: int
    history: list[HistoryEntry] = Field(description="Ladder events of the stream.")
    end_reason: str | None


class Cancelled(_Body):
    id: str
    cancelled: bool
    pages_held: int


class Capacity(_Body):
    replicas: list[dict] = Field(description="One entry per engine replica (serve/fanout.py).")
    free_bytes: int = Field(description="Free GPU KV bytes, summed over the replicas.")
    total_bytes: int = Field(description="GPU KV arena bytes, summed over the replicas.")
    streams_that_fit: int = Field(
        description="More streams admission takes now, summed: of ?frames=N video frames, or "
        "of the engine's default length (the projection admission itself uses)."
    )


class Health(_Body):
    status: Literal["ok"]
    replica: str


class ErrorDetail(_Body):
    status: int
    code: str
    field: str | None
    message: str


class ErrorBody(_Body):
    error: ErrorDetail


# -- the web page's bodies (ui.py) ---------------------------------------------------------------


class SignIn(_Body):
    key: str = Field(min_length=1, max_length=512, description="An API key (sent in the body).")


class Session(_Body):
    tenant: str
    auth: bool = Field(description="False when this server runs without auth (local demo).")
    expires_at: int | None = Field(description="Unix seconds the session cookie ends; None = none.")


class StreamSummary(_Body):
    id: str
    prompt: str
    frames_done: int
    frames_wanted: int
    created: float = Field(description="Unix seconds the stream was created.")
    end_reason: str | None


class StreamList(_Body):
    streams: list[StreamSummary] = Field(description="The tenant's streams, newest first.")
    replicas: list[str] = Field(description="Replicas that answered.")


class ModelInfo(_Body):
    name: str
    layers: int
    latent_frames_per_chunk: int
    frames_per_chunk: int = Field(description="Video frames one chunk decodes to.")
    fps: float = Field(description="Playback rate of video.mp4.")
    max_frames_per_stream: int
    page_bytes: dict[str, int] = Field(description="Bytes of one KV page, by format.")
    vocabulary: list[str] | None = Field(description="Words the model knows; None = any text.")
    examples: list[str] = Field(description="Prompts the model knows.")


class KvSummary(_Body):
    replica: str
    time: float = Field(description="Unix seconds of the reading.")
    capacity_bytes: dict[str, int] = Field(description="tier -> bytes of the KV arena")
    bytes: dict[str, dict[str, int]] = Field(description="format -> tier -> bytes held")
    pages: dict[str, dict[str, int]] = Field(description="format -> tier -> pages held")
    bf16_equivalent_bytes: dict[str, dict[str, int]] = Field(
        description="format -> tier -> bytes the same pages would take in BF16"
    )
    resident_streams: int = Field(description="Streams whose pages are in the GPU arena.")
    bf16_would_hold: int | None = Field(
        description="Streams of the residents' mean length the arena holds if every page were "
        "BF16 (None: no resident stream)."
    )
    qvg_would_hold: int | None = Field(
        description="The same, at the residents' current format mix."
    )
    live_streams: int
    waiting: int
