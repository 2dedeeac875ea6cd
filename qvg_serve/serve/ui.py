"""The web page (`/ui`) and the JSON it reads; CORS. Wired into the API by `mount_ui`.

    GET  /ui/                 the page (qvg_serve/serve/page/: HTML, JS, CSS; no CDN, CSP 'self')
    POST /v1/session          {"key"} -> HttpOnly SameSite=Strict session cookie (auth.py)
    GET  /v1/session          who the cookie (or header key) is;   DELETE: sign out
    GET  /v1/streams          the tenant's streams, newest first (from the stream store)
    GET  /v1/feed?id=..&start=..   one SSE connection carrying the frames of up to 16 streams
    GET  /v1/model            model facts, page sizes, the prompt vocabulary when there is one
    GET  /v1/kv               KV bytes by format and tier vs BF16 and the arena (one replica)

Why one multiplexed feed and not an MJPEG <img> per tile: a browser opens at most 6 HTTP/1.1
connections per host, and a live MJPEG response holds one for the stream's whole life, so a
page of 12 live tiles would starve its own status requests. The feed merges the streams' SSE
frames as /frames sends them (read from the stream store, delivery.py: a tile keeps playing
when its stream moves to another replica) and tags each event with its stream id.
MJPEG still works with the cookie for a single `<img src=".../frames">`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, Query, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import (
    FileResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)

from qvg_serve.serve import delivery
from qvg_serve.serve.auth import (
    SESSION_COOKIE,
    AuthError,
    Guard,
    check_csrf,
    cookie_header,
    header_key,
)
from qvg_serve.serve.config import AppConfig
from qvg_serve.serve.errors import ApiError
from qvg_serve.serve.frames import SSE_TYPE, sse_event
from qvg_serve.serve.schema import KvSummary, ModelInfo, Session, SignIn, StreamList
from qvg_serve.serve.stream_ids import STREAM_ID

log = logging.getLogger("qvg_serve.serve.ui")

UI_DIR = Path(__file__).parent / "page"
ASSET_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
               ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}  # fmt: skip
CSP = (
    "default-src 'self'; img-src 'self' data: blob:; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
"""The page loads nothing from another host: the browser enforces it, not only our tests."""
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; worker-src 'self' blob:; object-src 'none'; base-uri 'none'"
)
"""/docs and /redoc: FastAPI's pages hold inline scripts; ReDoc's sidebar asks cdn.redoc.ly
for a logo, which this policy blocks (the image hides itself), so those pages stay offline."""
FEED_MAX_STREAMS = 16
HEARTBEAT_S = 15.0  # an SSE comment this often keeps idle proxies from closing the feed


def mount_ui(
    app: FastAPI,
    cfg: AppConfig,
    engine,
    store,
    tenant,
    guard: Guard,
    viewers: delivery.Viewers,
    reads: delivery.SharedFrames,
) -> None:
    """Add the page, its JSON endpoints and (when configured) CORS to the API app; `store` is
    the stream store actor (store.py), `reads` the ingress's shared frame reads of it; a feed
    counts as one of the tenant's `viewers`."""
    _session_routes(app, cfg, guard)
    _read_routes(app, cfg, engine, store, tenant)
    _feed_route(app, reads, tenant, viewers)
    _page_routes(app)
    app.add_middleware(DocsPolicy, paths=("/docs", "/redoc"))  # FastAPIOffline serves them
    if cfg.server.cors_origins:
        # Cross-origin callers send the key in a header; credentials (cookies) stay same-site,
        # and X-QVG-CSRF is not an allowed header, so a foreign page cannot ride a session.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cfg.server.cors_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["authorization", "x-api-key", "content-type"],
            expose_headers=["retry-after"],
            allow_credentials=False,
            max_age=600,
        )


def _auth_error(exc: AuthError) -> ApiError:
    return ApiError(exc.status, exc.code, str(exc), exc.field)


def _session_routes(app: FastAPI, cfg: AppConfig, guard: Guard) -> None:
    server = cfg.server

    @app.post("/v1/session", response_model=Session)
    async def sign_in(body: SignIn, request: Request):
        if not guard.enabled:
            return Session(tenant="default", auth=False, expires_at=None)
        try:
            check_csrf("POST", request.headers)  # login CSRF: a foreign form cannot sign us in
        except AuthError as exc:
            raise _auth_error(exc) from None
        who = guard.lookup(body.key)
        if who is None:
            raise ApiError(401, "unauthorized", "unknown API key", "key")
        token, exp = guard.sessions.issue(body.key, who)
        resp = JSONResponse(Session(tenant=who, auth=True, expires_at=exp).model_dump())
        resp.headers["set-cookie"] = cookie_header(
            token, server.session_ttl_s, _cookie_path(request), request.url.scheme == "https"
        )
        return resp

    @app.get("/v1/session", response_model=Session)
    async def whoami(request: Request):
        if not guard.enabled:
            return Session(tenant="default", auth=False, expires_at=None)
        try:
            if header_key(request.headers) is not None:
                who = guard.tenant("GET", request.headers, request.query_params, {})
                return Session(tenant=who, auth=True, expires_at=None)
            token = request.cookies.get(SESSION_COOKIE) or ""
            who, exp = guard.sessions.check(token)
        except AuthError as exc:
            raise _auth_error(exc) from None
        return Session(tenant=who, auth=True, expires_at=exp)

    @app.delete("/v1/session", status_code=204)
    async def sign_out(request: Request):
        if request.cookies.get(SESSION_COOKIE):
            try:
                check_csrf("DELETE", request.headers)
            except AuthError as exc:
                raise _auth_error(exc) from None
        path, secure = _cookie_path(request), request.url.scheme == "https"
        return Response(status_code=204, headers={"set-cookie": cookie_header("", 0, path, secure)})


def _cookie_path(request: Request) -> str:
    return (request.scope.get("root_path") or "").rstrip("/") + "/"


def _read_routes(app: FastAPI, cfg: AppConfig, engine, store, tenant) -> None:
    @app.get("/v1/streams", response_model=StreamList)
    async def list_streams(
        who: str = Depends(tenant),
        limit: int = Query(256, ge=1, le=4096, description="Most streams to return."),
    ):
        got = await store.list.remote(tenant=who, limit=limit)
        return StreamList(streams=got["streams"], replicas=got["replicas"])

    @app.get("/v1/model", response_model=ModelInfo)
    async def model(who: str = Depends(tenant)):
        got = await engine.model_info.remote()
        return ModelInfo(**got, max_frames_per_stream=cfg.server.max_frames_per_stream)

    @app.get("/v1/kv", response_model=KvSummary)
    async def kv(who: str = Depends(tenant)):
        got = await engine.kv.remote()
        return KvSummary(**got, time=time.time())


def _feed_route(app: FastAPI, reads, tenant, viewers: delivery.Viewers) -> None:
    @app.get(
        "/v1/feed",
        response_class=StreamingResponse,
        responses={200: {"content": {SSE_TYPE: {}}}},
    )
    async def feed(
        id: Annotated[list[str], Query(description=f"Stream ids (1 to {FEED_MAX_STREAMS}).")],
        who: str = Depends(tenant),
        start: Annotated[list[int] | None, Query(description="First frame per id.")] = None,
    ):
        """Frames of several streams as one SSE stream: `frame` and `end` events as on
        /frames?format=sse with an `id` field added; `gone` for an id that is not yours or no
        longer exists; `done` once every stream has ended."""
        if not 1 <= len(id) <= FEED_MAX_STREAMS or len(set(id)) != len(id):
            raise ApiError(422, "invalid", f"id: give 1 to {FEED_MAX_STREAMS} distinct ids", "id")
        if start and (len(start) != len(id) or min(start) < 0):
            raise ApiError(422, "invalid", "start: one frame index >= 0 per id, or none", "start")
        gens = {}
        for sid, first in zip(id, start or [0] * len(id), strict=True):
            if not STREAM_ID.match(sid):
                raise ApiError(422, "invalid", f"id: {sid[:80]!r} is not a stream id", "id")
            gens[sid] = delivery.relay(reads, sid, who, "sse", first, preamble=False)
        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        viewers.check(who)
        body = viewers.counted(who, _merge(gens))
        return StreamingResponse(body, media_type=SSE_TYPE, headers=headers)


async def _merge(gens: dict):
    """Interleave the streams' SSE events as they come, each tagged with its stream id."""
    queue: asyncio.Queue = asyncio.Queue(maxsize=4 * len(gens))  # backpressure per stream
    tasks = [asyncio.create_task(_pump(sid, gen, queue)) for sid, gen in gens.items()]
    try:
        open_ = len(tasks)
        while open_:
            try:
                item = await asyncio.wait_for(queue.get(), HEARTBEAT_S)
            except TimeoutError:
                yield b": keep-alive\n\n"
                continue
            if item is None:
                open_ -= 1
            else:
                yield item
        yield sse_event("done", {})
    finally:  # the client went away (or all ended): stop every stream's reader
        for task in tasks:
            task.cancel()


async def _pump(sid: str, gen, queue: asyncio.Queue) -> None:
    tag = b'data: {"id":"' + sid.encode() + b'",'  # ids match STREAM_ID: safe in JSON
    sent = False
    try:
        async for part in gen:
            sent = True
            await queue.put(part.replace(b"data: {", tag, 1))
    except Exception as exc:  # the store unreachable: the tile shows it ended
        log.warning("feed of %s stopped: %s", sid, exc)
    if not sent:
        await queue.put(sse_event("gone", {"id": sid}))
    await queue.put(None)


def _page_routes(app: FastAPI) -> None:
    assets = {p.name: p for p in UI_DIR.iterdir() if p.suffix in ASSET_TYPES}
    headers = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
               "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}  # fmt: skip

    @app.get("/ui", include_in_schema=False)
    async def ui_root(request: Request):
        return RedirectResponse(request.url.path + "/", status_code=307)

    @app.get("/ui/", include_in_schema=False)
    async def ui_index():
        return FileResponse(assets["index.html"], media_type=ASSET_TYPES[".html"], headers=headers)

    @app.get("/ui/{name}", include_in_schema=False)
    async def ui_asset(name: str):
        path = assets.get(name)  # only the files shipped in the package, never a path
        if path is None:
            raise ApiError(404, "not_found", f"no page asset {name[:80]!r}", None)
        return FileResponse(path, media_type=ASSET_TYPES[path.suffix], headers=headers)


class DocsPolicy:
    """ASGI middleware: the docs pages get DOCS_CSP (pure ASGI: streaming responses pass)."""

    def __init__(self, app, paths) -> None:
        self.app, self.paths = app, {p for p in paths if p}

    async def __call__(self, scope, receive, send):
        if (
            scope["type"] != "http"
            or scope["path"].removeprefix(scope.get("root_path", "")) not in self.paths
        ):
            return await self.app(scope, receive, send)

        async def with_policy(message):
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", []),
                    (b"content-security-policy", DOCS_CSP.encode()),
                ]
            await send(message)

        return await self.app(scope, receive, with_policy)
