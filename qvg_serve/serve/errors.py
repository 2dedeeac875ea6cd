"""API errors, JSON error bodies and the body-size middleware (413), shared by the handlers."""

from __future__ import annotations

from fastapi.responses import JSONResponse


class ApiError(Exception):
    """An HTTP error with a machine-readable code and the offending field."""

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


def actor_died(exc: BaseException) -> bool:
    """Whether `exc` is Ray's RayActorError (or a subclass: ActorDiedError, ActorUnavailable-
    Error), recognised by its class names so the API module needs no Ray import."""
    return any(
        c.__name__ == "RayActorError" and c.__module__.startswith("ray.") for c in type(exc).__mro__
    )


def error_response(
    status: int,
    code: str,
    message: str,
    field: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"status": status, "code": code, "field": field, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


class BodyLimit:
    """ASGI middleware: 413 for a body over `limit` bytes, by Content-Length or as it streams."""

    def __init__(self, app, limit: int, on_reject=None) -> None:
        self.app, self.limit, self.on_reject = app, limit, on_reject

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await self._reject(scope, receive, send)
        body, more = b"", True  # no length given (chunked): read it all, up to the limit
        while more:
            msg = await receive()
            if msg["type"] != "http.request":
                return await self.app(scope, receive, send)  # disconnected
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
            if len(body) > self.limit:
                return await self._reject(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    async def _reject(self, scope, receive, send):
        if self.on_reject is not None:
            self.on_reject("too_large")
        resp = error_response(413, "too_large", f"request body over {self.limit} bytes", "body")
        await resp(scope, receive, send)
