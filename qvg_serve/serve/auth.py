"""Who is calling: API keys in headers, or a browser session cookie exchanged for a key.

    curl / programs     Authorization: Bearer <key>   or   X-API-Key: <key>
    the web page (/ui)  POST /v1/session {"key": ...}  ->  Set-Cookie: qvg_session=<token>;
                        HttpOnly; SameSite=Strict; Path=/; Max-Age=<session_ttl_s>

A session token is `<payload>.<mac>`, both base64url: the payload is JSON {tenant, expiry,
key fingerprint}, the mac HMAC-SHA256 over it with the server's secret (stdlib `hmac`; the
secret comes from `server.session_secret_env`, else it is drawn per process, so sessions end
when the ingress restarts and are not shared between ingress replicas). A token whose mac,
expiry or key fingerprint (the key was rotated out) does not check is a 401.

CSRF: the cookie is SameSite=Strict, so a request started by another site carries no cookie
at all; as a second lock, every state-changing request (POST, PUT, PATCH, DELETE)
authenticated by the cookie must carry the custom header `X-QVG-CSRF: 1`, which a cross-site
form cannot send and a cross-origin script cannot send without a CORS preflight (refused
unless `server.cors_origins` lists that origin). Header-key requests need no CSRF header: a
browser never attaches those on its own.

A key is never accepted from a URL (query strings land in access logs, browser history and
Referer headers): a request with one is refused with 400 before anything else reads it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Mapping

SESSION_COOKIE = "qvg_session"
CSRF_HEADER = "x-qvg-csrf"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
URL_KEY_PARAMS = frozenset({"key", "api_key", "apikey", "api-key", "token", "access_token"})
"""Query parameters that look like a credential: refused, never read."""


class AuthError(Exception):
    """A request the auth layer refuses: HTTP status, error code, field, message."""

    def __init__(self, status: int, code: str, message: str, field: str) -> None:
        super().__init__(message)
        self.status, self.code, self.field = status, code, field


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def fingerprint(key: str) -> str:
    """A short digest naming a key inside a token (the key itself never goes in one)."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


class Sessions:
    """Signs and checks session tokens; `keys` maps API key -> tenant."""

    def __init__(self, keys, secret: bytes, ttl_s: int) -> None:
        """`keys`: a Mapping or a reloading `keys.KeyTable` (anything with `.items()`)."""
        if len(secret) < 16:
            raise ValueError("session secret: use at least 16 bytes (e.g. 32 random bytes)")
        self._secret, self.ttl_s, self._keys = secret, ttl_s, keys
        self._seen: dict[str, str] = {}
        self._by_print: dict[str, str] = {}

    def _tenant_of_print(self, kprint: str) -> str | None:
        """Tenant of the key with this fingerprint now (keys may have been rotated)."""
        current = dict(self._keys.items())
        if current != self._seen:
            self._seen = current
            self._by_print = {fingerprint(k): t for k, t in current.items()}
        return self._by_print.get(kprint)

    def issue(self, key: str, tenant: str, now: float | None = None) -> tuple[str, int]:
        """(token, expiry as Unix seconds) for a key already checked to map to `tenant`."""
        exp = int(now if now is not None else time.time()) + self.ttl_s
        body = json.dumps({"t": tenant, "e": exp, "k": fingerprint(key)}, separators=(",", ":"))
        payload = _b64(body.encode())
        return f"{payload}.{self._mac(payload)}", exp

    def check(self, token: str, now: float | None = None) -> tuple[str, int]:
        """(tenant, expiry) of a valid token; AuthError 401 if tampered, expired or revoked."""
        payload, _, mac = token.partition(".")
        if not mac or not hmac.compare_digest(mac, self._mac(payload)):
            raise _unauthorized("session cookie is invalid: sign in again")
        try:
            claims = json.loads(_unb64(payload))
            tenant, exp, kprint = claims["t"], int(claims["e"]), claims["k"]
        except (ValueError, KeyError, TypeError):
            raise _unauthorized("session cookie is invalid: sign in again") from None
        if exp <= (now if now is not None else time.time()):
            raise _unauthorized("session expired: sign in again")
        if self._tenant_of_print(kprint) != tenant:  # the key was removed or moved tenant
            raise _unauthorized("session's API key is no longer valid: sign in again")
        return tenant, exp

    def _mac(self, payload: str) -> str:
        return _b64(hmac.new(self._secret, payload.encode(), hashlib.sha256).digest())


def session_secret(env_name: str | None, environ: Mapping[str, str] = os.environ) -> bytes:
    """The configured secret (UTF-8 of `environ[env_name]`), else 32 random bytes."""
    text = environ.get(env_name, "") if env_name else ""
    return text.encode() if text else secrets.token_bytes(32)


def _unauthorized(message: str) -> AuthError:
    return AuthError(401, "unauthorized", message, "authorization")


class Guard:
    """The tenant of a request from its headers (Bearer, X-API-Key) or its session cookie."""

    def __init__(self, keys, sessions: Sessions) -> None:
        """`keys`: a Mapping or a reloading `keys.KeyTable` (its `tenant(key)` re-reads)."""
        self.sessions = sessions
        self.enabled = True  # False: auth resolved off (the API answers as tenant "default")
        self.lookup = keys.tenant if hasattr(keys, "tenant") else dict(keys).get

    def tenant(self, method: str, headers: Mapping[str, str], query, cookies) -> str:
        """`headers` lower-cased names; `query` the parameter names; `cookies` name -> value."""
        refuse_url_keys(query)
        key = header_key(headers)
        if key is not None:
            who = self.lookup(key)
            if who is None:
                raise _unauthorized("unknown API key (Authorization: Bearer <key> or X-API-Key)")
            return who
        token = cookies.get(SESSION_COOKIE)
        if not token:
            raise _unauthorized(
                "missing API key (Authorization: Bearer <key> or X-API-Key, "
                "or sign in at /ui for a session cookie)"
            )
        tenant, _ = self.sessions.check(token)
        check_csrf(method, headers)
        return tenant


def header_key(headers: Mapping[str, str]) -> str | None:
    """The key of `Authorization: Bearer` or `X-API-Key`, None when neither is sent."""
    auth = headers.get("authorization", "")
    key = auth[7:].strip() if auth.lower().startswith("bearer ") else None
    return key or headers.get("x-api-key")


def refuse_url_keys(query) -> None:
    bad = sorted(URL_KEY_PARAMS.intersection(p.lower() for p in query))
    if bad:
        raise AuthError(
            400,
            "key_in_url",
            f"query parameter {bad[0]!r} looks like a credential: URLs end up in logs and "
            "history, so keys go in the Authorization or X-API-Key header (or sign in at /ui)",
            bad[0],
        )


def check_csrf(method: str, headers: Mapping[str, str]) -> None:
    """A state-changing request riding on the cookie must say so with the custom header."""
    if method.upper() in UNSAFE_METHODS and headers.get(CSRF_HEADER) != "1":
        raise AuthError(
            403,
            "csrf",
            f"a {method.upper()} with the session cookie needs the header X-QVG-CSRF: 1",
            CSRF_HEADER,
        )


def cookie_header(token: str, max_age: int, path: str, secure: bool) -> str:
    """Set-Cookie value of the session (max_age 0 clears it)."""
    parts = [f"{SESSION_COOKIE}={token}", f"Path={path}", f"Max-Age={max_age}"]
    parts += ["HttpOnly", "SameSite=Strict"] + (["Secure"] if secure else [])
    return "; ".join(parts)
