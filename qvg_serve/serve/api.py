"""The HTTP API (FastAPI) of the ingress: auth, validation, errors, routing to engine replicas.

Every client error is a JSON `ErrorBody` {"error": {status, code, field, message}} with a 4xx:
422 for a body or parameter out of range (field = its path, e.g. "frames"), 400 for a body that
is not JSON, 401 without a valid API key, 404 for an unknown stream or another tenant's, 409 for
video.mp4 of a live stream, 413 for a body over server.max_body_bytes, 429 + Retry-After when
the scheduler refuses, 503 + Retry-After while a stream moves to another replica (its replica
died or is draining) or no replica answers. Any other 5xx is a bug.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, Literal

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from qvg_serve.serve import delivery, stream_ids
from qvg_serve.serve.config import AppConfig
from qvg_serve.serve.errors import BodyLimit, actor_died, error_response
from qvg_serve.serve.frames import MJPEG_TYPE, SSE_TYPE, mp4_from_jpegs
from qvg_serve.serve.schema import (
    PRIORITIES,
    Action,
    ActionResult,
    Cancelled,
    Capacity,
    Created,
    CreateStream,
    ErrorBody,
    Health,
    StreamStatus,
    StreamUrls,
)
from qvg_serve.serve.stream_ids import OWNER_KWARG

ERRORS = {code: {"model": ErrorBody} for code in (400, 401, 404, 409, 413, 422, 429, 503)}
FPS = 16.0
"""Playback rate of video.mp4 (Self-Forcing's 16 fps)."""
RECOVERING_RETRY_S = 2
"""Retry-After while a stream moves to another replica (a beat timeout plus a recompute)."""


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.field, self.headers = status, code, field, headers


def build_api(cfg: AppConfig, engine, store, environ=os.environ) -> FastAPI:
    """The FastAPI app; `engine` is the engine deployment's handle, `store` the stream store
    actor (store.py): every per-stream request asks it where the stream lives."""
    server = cfg.server
    keys = server.api_keys(environ) if server.auth_enabled() else {}
    app = FastAPI(title="qvg-serve", version="1", description=__doc__, responses=ERRORS)  # type: ignore[arg-type]

    def count(reason: str) -> None:
        engine.reject.remote(reason)  # fire and forget: counted on an engine replica

    app.add_middleware(BodyLimit, limit=server.max_body_bytes, on_reject=count)
    _error_handlers(app, count)

    def tenant(request: Request) -> str:
        if not server.auth_enabled():
            return "default"
        auth = request.headers.get("authorization", "")
        key = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        key = key or request.headers.get("x-api-key")
        if key is None or key not in keys:
            raise ApiError(
                401,
                "unauthorized",
                "missing or unknown API key (Authorization: Bearer <key> or X-API-Key)",
                "authorization",
            )
        return keys[key]

    def not_found(stream_id: str) -> ApiError:
        return ApiError(404, "not_found", f"no stream {stream_id[:80]!r}", "stream_id")

    async def route(stream_id: str, who: str) -> dict:
        """The store's view of a stream (home replica, state); 404 if unknown or foreign."""
        got = None
        if stream_ids.owner(stream_id):
            got = await store.route.remote(stream_id, who)
        if got is None:
            raise not_found(stream_id)
        return got

    async def on_home(method: str, stream_id: str, who: str, where: dict, **kw):
        """`method` on the stream's home replica; None if it does not run it there now
        (ended, moved, or the replica died: then the store hears of it at once)."""
        if where["state"] != "live":
            return None
        kw[OWNER_KWARG] = where["home"]
        try:
            return await getattr(engine, method).remote(stream_id, tenant=who, **kw)
        except Exception as exc:
            if not actor_died(exc):
                raise
            store.suspect.remote(where["home"])
            return None

    async def settled(stream_id: str, who: str) -> dict:
        """The route once the store has the end the engine reported (a moment later)."""
        where = await route(stream_id, who)
        for _ in range(200):
            if where["state"] != "live":
                return where
            await asyncio.sleep(0.05)
            where = await route(stream_id, who)
        return where

    async def cancel_stream(stream_id: str, who: str) -> dict:
        where = await route(stream_id, who)
        if where["state"] == "ended":
            return {"cancelled": False, "pages_held": 0}
        got = await on_home("cancel", stream_id, who, where)
        if got is not None:
            return got
        if await store.cancel.remote(stream_id, who):  # re-homing: ends in the store
            return {"cancelled": True, "pages_held": 0}
        raise recovering(stream_id)

    @app.post("/v1/streams", status_code=201, response_model=Created)
    async def create(body: CreateStream, request: Request, who: str = Depends(tenant)):
        if body.frames > server.max_frames_per_stream:
            raise ApiError(
                422,
                "invalid",
                f"frames = {body.frames} is over this server's "
                f"max_frames_per_stream = {server.max_frames_per_stream}",
                "frames",
            )
        got = await _retrying(
            lambda: engine.create.remote(
                tenant=who,
                prompt=body.prompt,
                frames=body.frames,
                seed=body.seed,
                priority=PRIORITIES[body.priority],
                target_fps=body.target_fps,
            )
        )
        if not got["accepted"]:
            raise _refused(got)
        return Created(id=got["id"], urls=_urls(str(request.base_url), got["id"]))

    @app.get("/v1/streams/{stream_id}", response_model=StreamStatus)
    async def status(stream_id: str, who: str = Depends(tenant)):
        where = await route(stream_id, who)
        snap = await on_home("status", stream_id, who, where)
        if snap is not None and snap["end_reason"] is not None:
            where, snap = await settled(stream_id, who), None
        elif snap is None and where["state"] == "live":
            where = await route(stream_id, who)  # moved or ended meanwhile
        return _status(stream_id, where, snap)

    @app.get(
        "/v1/streams/{stream_id}/frames",
        response_class=StreamingResponse,
        responses={200: {"content": {MJPEG_TYPE: {}, SSE_TYPE: {}}}},
    )
    async def frames(
        stream_id: str,
        who: str = Depends(tenant),
        format: Literal["mjpeg", "sse"] = "mjpeg",
        start: int = Query(0, ge=0, le=10**9, description="First frame to send."),
        cancel_on_disconnect: bool = False,
        last_event_id: str | None = Header(
            None, description="SSE reconnect: frames after this index (the events' `id:`)."
        ),
    ):
        await route(stream_id, who)
        first = delivery.resume_from(start, last_event_id)
        gen = delivery.relay(store, stream_id, who, format, first)
        media = MJPEG_TYPE if format == "mjpeg" else SSE_TYPE
        body = _relay(gen, lambda: cancel_stream(stream_id, who) if cancel_on_disconnect else None)
        return StreamingResponse(body, media_type=media, headers={"Cache-Control": "no-store"})

    @app.get(
        "/v1/streams/{stream_id}/video.mp4",
        response_class=Response,
        responses={200: {"content": {"video/mp4": {}}}},
    )
    async def video(stream_id: str, who: str = Depends(tenant)):
        where = await route(stream_id, who)
        if where["state"] != "ended":
            raise ApiError(
                409, "not_done", "the stream is still generating; poll its status", "stream_id"
            )
        if where["frames_done"] == 0:
            raise ApiError(409, "no_frames", "the stream ended without frames", "stream_id")
        cached = await store.video.remote(stream_id, who)
        if cached is not None:
            return Response(await cached, media_type="video/mp4")
        jpegs = await delivery.all_jpegs(store, stream_id, who)
        mp4 = await asyncio.to_thread(mp4_from_jpegs, jpegs, FPS)
        store.put_video.remote(stream_id, mp4)
        return Response(mp4, media_type="video/mp4")

    @app.post("/v1/streams/{stream_id}/actions", response_model=ActionResult)
    async def act(stream_id: str, body: Action, who: str = Depends(tenant)):
        where = await route(stream_id, who)
        got = await on_home("act", stream_id, who, where, prompt=body.prompt)
        if got is None:
            where = await route(stream_id, who)
            if where["state"] != "ended":
                raise recovering(stream_id)
            got = False
        if isinstance(got, str):
            raise ApiError(422, "invalid", f"prompt: {got}", "prompt")
        detail = "applied from the next chunk boundary" if got else "the stream has ended"
        if not got:
            raise ApiError(409, "ended", detail, "stream_id")
        return ActionResult(id=stream_id, applied=True, detail=detail)

    @app.delete("/v1/streams/{stream_id}", response_model=Cancelled)
    async def cancel(stream_id: str, who: str = Depends(tenant)):
        return Cancelled(id=stream_id, **await cancel_stream(stream_id, who))

    @app.get("/v1/health", response_model=Health)
    async def health():
        got = await _retrying(lambda: engine.health.remote())
        return Health(status="ok", replica=got["replica"])

    @app.get("/v1/capacity", response_model=Capacity)
    async def capacity(who: str = Depends(tenant)):
        got = await engine.capacity.remote()
        return Capacity(
            replicas=[got], free_bytes=got["free_bytes"], streams_that_fit=got["streams_that_fit"]
        )

    @app.get("/metrics", response_class=Response, include_in_schema=False)
    async def metrics():
        data, ctype = await engine.metrics_text.remote()
        return Response(data, media_type=ctype)

    return app


def recovering(stream_id: str) -> ApiError:
    return ApiError(
        503,
        "recovering",
        f"stream {stream_id!r} is moving to another replica (its replica stopped); retry",
        "stream_id",
        {"Retry-After": str(RECOVERING_RETRY_S)},
    )


async def _retrying(call, tries: int = 4):
    """A call to any engine replica, again on another if the one picked died (Serve drops a
    dead replica from the router within seconds); 503 + Retry-After if none answers."""
    for attempt in range(tries):
        try:
            return await call()
        except Exception as exc:
            if not actor_died(exc):
                raise
            if attempt < tries - 1:
                await asyncio.sleep(0.5 * (attempt + 1))
    raise ApiError(
        503,
        "unavailable",
        "no engine replica answered; retry",
        None,
        {"Retry-After": str(RECOVERING_RETRY_S)},
    )


def _status(stream_id: str, where: dict, snap: dict | None) -> JSONResponse | dict:
    """Status from the engine's snapshot while the stream runs, else from the store."""
    body = {**_EMPTY, **(snap or where["final"] or {})}
    body.update(
        id=stream_id,
        prompt=where["prompt"],
        frames_done=where["frames_done"],
        frames_wanted=where["frames_wanted"],
    )
    if snap is None and where["state"] == "recovering":
        body.update(state="recovering", chunks_done=where["chunks_done"], pages={}, bytes={})
        return JSONResponse(body, headers={"Retry-After": str(RECOVERING_RETRY_S)})
    if where["state"] == "ended":
        reason = where["end_reason"]
        body["end_reason"] = reason
        if where["final"] is None:
            body["state"] = _END_STATE.get(reason, "failed")
    return body


_EMPTY = {"state": "unknown", "chunks_done": 0, "pages": {}, "bytes": {}, "degraded": False,
          "preemptions": 0, "history": [], "end_reason": None}  # fmt: skip
_END_STATE = {"completed": "finished", "closed": "finished", "cancelled": "cancelled"}


async def _relay(gen, on_disconnect):
    """Forward the store's frames; if the client goes away, optionally cancel the stream."""
    finished = False
    try:
        async for part in gen:
            yield part
        finished = True
    finally:
        if not finished:
            await gen.aclose()
            pending = on_disconnect()
            if pending is not None:
                try:
                    await asyncio.shield(pending)
                except ApiError:  # re-homing: the store cancels it on the next try
                    pass


def _refused(got: dict[str, Any]) -> ApiError:
    reason, retry = got["reason"], got.get("retry_after_s", 0.0)
    if reason == "bad_prompt":
        return ApiError(422, "invalid", f"prompt: {got['message']}", "prompt")
    if reason in ("kv_pressure", "queue_full"):
        return ApiError(
            429,
            reason,
            f"the server is refusing new streams ({reason}); retry after {retry:g} s",
            None,
            {"Retry-After": str(max(1, round(retry)))},
        )
    if reason == "too_large":
        return ApiError(
            422,
            "too_large",
            "one chunk of this stream does not fit this server's KV pool or your tenant's page cap",
            "frames",
        )
    return ApiError(409, reason or "refused", f"stream refused: {reason}", None)


def _urls(base: str, sid: str) -> StreamUrls:
    root = f"{base.rstrip('/')}/v1/streams/{sid}"
    return StreamUrls(
        status=root,
        frames=f"{root}/frames",
        sse=f"{root}/frames?format=sse",
        video=f"{root}/video.mp4",
        actions=f"{root}/actions",
    )


def _error_handlers(app: FastAPI, count) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        if exc.code in ("unauthorized", "too_large") or exc.status == 422:
            count(exc.code if exc.code != "too_large" or exc.status == 413 else "invalid")
        return error_response(exc.status, exc.code, str(exc), exc.field, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        field = ".".join(loc) or "body"
        if first.get("type") == "json_invalid":
            count("invalid")
            return error_response(400, "bad_json", f"body is not JSON: {first['msg']}", "body")
        count("invalid")
        return error_response(422, "invalid", f"{field}: {first['msg']}", field)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), None)
