"""The HTTP API (FastAPI) of the ingress: auth, validation, errors, routing to engine replicas.

Every client error is a JSON `ErrorBody` {"error": {status, code, field, message}} with a 4xx:
422 for a body or parameter out of range (field = its path, e.g. "frames"), 400 for a body that
is not JSON, 401 without a valid API key, 404 for an unknown stream or another tenant's, 409 for
video.mp4 of a live stream, 413 for a body over server.max_body_bytes, 429 + Retry-After when
the scheduler refuses, 503 + Retry-After while the server drains (SIGTERM), while a stream
moves to another replica (its replica died or is draining: `recovering`) or when no engine
replica answers (`unavailable`). Any other 5xx is a bug. Auth (auth.py): 400 `key_in_url` for
a key in a query string, 403 `csrf` for a state-changing request on the session cookie
without X-QVG-CSRF: 1.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any, Literal

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response, StreamingResponse
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException

from qvg_serve.serve import delivery, fanout, stream_ids
from qvg_serve.serve.auth import AuthError, Guard, Sessions, session_secret
from qvg_serve.serve.config import AppConfig
from qvg_serve.serve.disconnect import detached
from qvg_serve.serve.drain import Draining
from qvg_serve.serve.errors import ApiError, BodyLimit, error_response
from qvg_serve.serve.frames import MJPEG_TYPE, SSE_TYPE, mp4_from_jpegs
from qvg_serve.serve.homes import Homes, recovering, retrying
from qvg_serve.serve.keys import KeyTable, resolve_auth
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
from qvg_serve.serve.stream_ids import AVOID_KWARG

ERRORS = {code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409, 413, 422, 429, 503)}
log = logging.getLogger("qvg_serve.serve.api")
RETRYABLE = ("kv_pressure", "queue_full")
"""Refusals another replica may not give: retried there before the client sees a 429."""
FPS = 16.0
"""Playback rate of video.mp4 (Self-Forcing's 16 fps)."""


def build_api(
    cfg: AppConfig, engine, store, environ=os.environ, drain: Draining | None = None
) -> FastAPI:
    """The FastAPI app; `engine` is the engine deployment's handle, `store` the stream store
    actor (store.py: every per-stream request asks it where the stream lives); `drain` is the
    ingress's drain switch (app.py flips it on SIGTERM: new streams get 503)."""
    server = cfg.server
    auth_on, warnings = resolve_auth(server, environ)  # ValueError: on, but no key anywhere
    for line in warnings:
        log.warning("%s", line)
    keys = KeyTable(server, environ) if auth_on else None
    drain = drain or Draining()
    # FastAPIOffline: /docs and /redoc with Swagger UI and ReDoc from the package, not a CDN
    app = FastAPIOffline(
        title="qvg-serve",
        version="1",
        description=__doc__,
        responses=ERRORS,  # type: ignore[arg-type]
        swagger_ui_parameters={"validatorUrl": None},  # no badge fetched from swagger.io
    )
    secret = session_secret(server.session_secret_env, environ)
    table = keys if keys is not None else {}
    guard = Guard(table, Sessions(table, secret, server.session_ttl_s))  # headers or cookie
    guard.enabled = auth_on

    def count(reason: str) -> None:
        engine.reject.remote(reason)  # fire and forget: counted on an engine replica

    app.add_middleware(BodyLimit, limit=server.max_body_bytes, on_reject=count)
    _error_handlers(app, count)

    def tenant(request: Request) -> str:
        if keys is None:
            return "default"
        try:
            return guard.tenant(
                request.method, request.headers, request.query_params, request.cookies
            )
        except AuthError as exc:
            raise ApiError(exc.status, exc.code, str(exc), exc.field) from None

    homes = Homes(engine, store)
    viewers = delivery.Viewers(server.max_viewers_per_tenant)
    reads = delivery.SharedFrames(store)  # viewers of a stream share its store reads

    async def place(**kw) -> dict[str, Any]:
        """engine.create, retried on another replica after a kv_pressure / queue_full refusal
        (the router leaves out the replicas in `avoid`; placement.py)."""
        tried: list[str] = []
        while True:
            avoid = {AVOID_KWARG: list(tried)}
            got = await retrying(lambda avoid=avoid: engine.create.remote(**kw, **avoid))
            if got["accepted"] or got["reason"] not in RETRYABLE:
                return got
            rid = stream_ids.owner(got["id"])
            if rid in tried or len(tried) + 1 >= server.create_tries:
                return got  # a repeat: the router had no untried replica left
            tried.append(rid)
            if len(tried) >= len(await fanout.roster(engine)):
                return got

    @app.post("/v1/streams", status_code=201, response_model=Created)
    async def create(body: CreateStream, request: Request, who: str = Depends(tenant)):
        if drain.on:
            raise ApiError(
                503,
                "draining",
                "the server is shutting down and takes no new streams; retry on another",
                None,
                {"Retry-After": str(drain.retry_after_s)},
            )
        if body.frames > server.max_frames_per_stream:
            raise ApiError(
                422,
                "invalid",
                f"frames = {body.frames} is over this server's "
                f"max_frames_per_stream = {server.max_frames_per_stream}",
                "frames",
            )
        got = await place(
            tenant=who,
            prompt=body.prompt,
            frames=body.frames,
            seed=body.seed,
            priority=PRIORITIES[body.priority],
            target_fps=body.target_fps,
        )
        if not got["accepted"]:
            raise _refused(got)
        return Created(id=got["id"], urls=_urls(str(request.base_url), got["id"]))

    @app.get("/v1/streams/{stream_id}", response_model=StreamStatus)
    async def status(stream_id: str, who: str = Depends(tenant)):
        return await homes.status(stream_id, who)

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
        await homes.route(stream_id, who)
        viewers.check(who)
        first = delivery.resume_from(start, last_event_id)
        gen = viewers.counted(who, delivery.relay(reads, stream_id, who, format, first))
        media = MJPEG_TYPE if format == "mjpeg" else SSE_TYPE
        hang_up = (lambda: homes.cancel(stream_id, who)) if cancel_on_disconnect else None
        body = _relay(gen, hang_up, drain)
        return StreamingResponse(body, media_type=media, headers={"Cache-Control": "no-store"})

    @app.get(
        "/v1/streams/{stream_id}/video.mp4",
        response_class=Response,
        responses={200: {"content": {"video/mp4": {}}}},
    )
    async def video(stream_id: str, who: str = Depends(tenant)):
        where = await homes.route(stream_id, who)
        if where["state"] != "ended":
            raise ApiError(
                409, "not_done", "the stream is still generating; poll its status", "stream_id"
            )
        if where["frames_done"] == 0:
            raise ApiError(409, "no_frames", "the stream ended without frames", "stream_id")
        cached = await store.video.remote(stream_id, who)
        if cached is not None:  # bytes from disk, or a ref into the object store
            mp4 = cached if isinstance(cached, bytes) else await cached
            return Response(mp4, media_type="video/mp4")
        jpegs = await delivery.all_jpegs(store, stream_id, who)
        mp4 = await asyncio.to_thread(mp4_from_jpegs, jpegs, FPS)
        store.put_video.remote(stream_id, mp4)
        return Response(mp4, media_type="video/mp4")

    @app.post("/v1/streams/{stream_id}/actions", response_model=ActionResult)
    async def act(stream_id: str, body: Action, who: str = Depends(tenant)):
        where = await homes.route(stream_id, who)
        got = await homes.on_home("act", stream_id, who, where, prompt=body.prompt)
        if got is None:
            where = await homes.route(stream_id, who)
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
        return Cancelled(id=stream_id, **await homes.cancel(stream_id, who))

    @app.get("/v1/health", response_model=Health)
    async def health():
        got = await retrying(lambda: engine.health.remote())
        return Health(status="ok", replica=got["replica"])

    @app.get("/v1/capacity", response_model=Capacity)
    async def capacity(
        who: str = Depends(tenant),
        frames: int | None = Query(
            None, ge=1, description="Stream length to count (video frames)."
        ),
    ):
        kw = {"frames": frames} if frames is not None else {}
        got = await fanout.each(engine, "capacity", **kw)  # every replica, not one at random
        return Capacity(
            replicas=got,
            free_bytes=sum(r["free_bytes"] for r in got),
            total_bytes=sum(r["total_bytes"] for r in got),
            streams_that_fit=sum(r["streams_that_fit"] for r in got),
        )

    @app.get("/metrics", response_class=Response, include_in_schema=False)
    async def metrics():
        data, ctype = await engine.metrics_text.remote()
        return Response(data, media_type=ctype)

    from qvg_serve.serve.ui import mount_ui  # imports this module: wired in last

    mount_ui(app, cfg, engine, store, tenant, guard, viewers, reads)
    return app


async def _relay(gen, on_disconnect, drain: Draining):
    """Forward the store's frames (delivery.py); if the client goes away, optionally cancel
    the stream.

    The cancel runs `detached` (disconnect.py): awaited here, inside the request Serve is
    cancelling, it was itself cancelled about one time in five."""
    finished = False
    drain.relays += 1  # a drain waits for open viewers (drain.py)
    try:
        async for part in gen:
            yield part
        finished = True
    finally:
        drain.relays -= 1
        if not finished:
            if on_disconnect is not None:  # first: the await below may be cancelled itself
                detached(on_disconnect)
            await gen.aclose()


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
