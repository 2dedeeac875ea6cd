"""Session cookies, CSRF and key-in-URL rules (auth.py), without Ray or a browser: the API app
runs in-process against a fake engine handle."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from qvg_serve.serve.api import build_api  # noqa: E402
from qvg_serve.serve.auth import (  # noqa: E402
    SESSION_COOKIE,
    AuthError,
    Sessions,
    cookie_header,
)
from qvg_serve.serve.config import AppConfig  # noqa: E402

ENV = {"QVG_API_KEYS": "key-acme:acme,key-globex:globex", "QVG_SESSION_SECRET": "s" * 32}
CSRF = {"X-QVG-CSRF": "1"}


class FakeEngine:
    """Each method answers like a replica (or the stream store: the same fake serves as both);
    `calls` records (method, tenant)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None]] = []

    def __getattr__(self, name: str):
        engine = self

        class Method:
            @staticmethod
            def remote(*args, **kwargs):
                engine.calls.append((name, kwargs.get("tenant")))
                return _done(ANSWERS.get(name))

        return Method


async def _coro(value):
    return value


def _done(value):
    return asyncio.ensure_future(_coro(value))


ANSWERS = {
    "roster": ["r1"],
    "capacity": {"replica": "r1", "free_bytes": 1, "total_bytes": 2, "streams_that_fit": 1},
    "cancel": {"cancelled": True, "pages_held": 0},
    "list": {"streams": [], "replicas": ["r1"]},  # the stream store's answers
    "route": {
        "state": "live",
        "home": "r1",
        "engine_id": 1,
        "prompt": "p",
        "frames_done": 0,
        "frames_wanted": 3,
        "chunks_done": 0,
        "end_reason": None,
        "final": None,
    },
    "reject": None,
}


@pytest.fixture
def client():
    engine = FakeEngine()
    app = build_api(AppConfig.from_args({"server": {"auth": True}}), engine, engine, ENV)
    with TestClient(app, base_url="http://127.0.0.1") as c:
        c.engine = engine
        yield c


def sign_in(client, key="key-acme"):
    r = client.post("/v1/session", json={"key": key}, headers=CSRF)
    assert r.status_code == 200, r.text
    return r


def test_sign_in_sets_httponly_strict_cookie(client):
    r = sign_in(client)
    cookie = r.headers["set-cookie"]
    assert f"{SESSION_COOKIE}=" in cookie
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert "key-acme" not in cookie, "the key itself must not travel in the cookie"
    assert r.json()["tenant"] == "acme"
    assert client.get("/v1/session").json()["tenant"] == "acme"


def test_cookie_authenticates_reads(client):
    sign_in(client)
    assert client.get("/v1/capacity").status_code == 200
    assert client.get("/v1/streams").status_code == 200
    assert ("list", "acme") in client.engine.calls  # the cookie's tenant, not another


def test_wrong_key_sign_in_401(client):
    r = client.post("/v1/session", json={"key": "nope"}, headers=CSRF)
    assert r.status_code == 401 and "set-cookie" not in r.headers


def test_sign_in_needs_csrf_header(client):
    r = client.post("/v1/session", json={"key": "key-acme"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "csrf"


def test_unsafe_request_with_cookie_needs_csrf_header(client):
    sign_in(client)
    r = client.delete("/v1/streams/r1-1")
    assert r.status_code == 403 and r.json()["error"]["field"] == "x-qvg-csrf"
    assert not [c for c in client.engine.calls if c[0] == "cancel"], "refused before the engine"
    assert client.delete("/v1/streams/r1-1", headers=CSRF).status_code == 200
    assert client.delete("/v1/streams/r1-1", headers={"X-QVG-CSRF": "yes"}).status_code == 403


def test_header_key_needs_no_csrf_header(client):
    r = client.delete("/v1/streams/r1-1", headers={"Authorization": "Bearer key-acme"})
    assert r.status_code == 200


@pytest.mark.parametrize("param", ["key", "api_key", "token", "access_token", "API_KEY"])
def test_key_in_query_string_refused(client, param):
    r = client.get(f"/v1/capacity?{param}=key-acme")
    assert r.status_code == 400 and r.json()["error"]["code"] == "key_in_url"
    assert "key-acme" not in r.text, "the error must not echo the key"
    # refused even alongside a valid header: the URL already leaked it
    r = client.get(f"/v1/capacity?{param}=x", headers={"X-API-Key": "key-acme"})
    assert r.status_code == 400


def test_tampered_cookie_401(client):
    sign_in(client)
    token = client.cookies[SESSION_COOKIE]
    payload, _, mac = token.partition(".")
    forged = Sessions({"key-globex": "globex"}, b"x" * 32, 60).issue("key-globex", "globex")[0]
    for bad in (
        payload + "." + mac[:-2] + ("AA" if mac[-2:] != "AA" else "BB"),  # mac changed
        forged.partition(".")[0] + "." + mac,  # payload swapped (globex), old mac
        forged,  # signed with another secret
        payload,  # no mac
        "garbage",
    ):
        client.cookies.set(SESSION_COOKIE, bad)
        r = client.get("/v1/capacity")
        assert r.status_code == 401, bad
        assert r.json()["error"]["code"] == "unauthorized"


def test_expired_cookie_401():
    s = Sessions({"k": "acme"}, b"x" * 32, ttl_s=60)
    token, exp = s.issue("k", "acme", now=1000.0)
    assert s.check(token, now=1059.0) == ("acme", exp)
    with pytest.raises(AuthError) as err:
        s.check(token, now=1060.0)
    assert err.value.status == 401 and "expired" in str(err.value)


def test_rotated_key_ends_its_sessions():
    token, _ = Sessions({"old": "acme"}, b"x" * 32, 60).issue("old", "acme")
    with pytest.raises(AuthError, match="no longer valid"):
        Sessions({"new": "acme"}, b"x" * 32, 60).check(token)


def test_expired_cookie_through_the_app(client, monkeypatch):
    sign_in(client)
    import qvg_serve.serve.auth as auth

    later = SimpleNamespace(time=lambda: time.time() + 9 * 3600)  # past the 8 h default
    monkeypatch.setattr(auth, "time", later)  # auth's clock only: the client keeps the cookie
    r = client.get("/v1/capacity")
    assert r.status_code == 401 and "expired" in r.json()["error"]["message"]


def test_sign_out_clears_cookie(client):
    sign_in(client)
    r = client.delete("/v1/session", headers=CSRF)
    assert r.status_code == 204 and "Max-Age=0" in r.headers["set-cookie"]
    assert client.get("/v1/capacity").status_code == 401


def test_sign_out_with_cookie_needs_csrf_header(client):
    sign_in(client)
    assert client.delete("/v1/session").status_code == 403


def test_short_secret_refused():
    with pytest.raises(ValueError, match="16 bytes"):
        Sessions({}, b"short", 60)


def test_cookie_header_secure_flag():
    assert "Secure" in cookie_header("t", 10, "/", secure=True)
    assert "Secure" not in cookie_header("t", 10, "/", secure=False)


def test_ui_page_has_strict_csp_and_docs_are_offline(client):
    r = client.get("/ui/")
    assert r.status_code == 200 and "default-src 'self'" in r.headers["content-security-policy"]
    assert client.get("/ui/app.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/ui/..%2Fapi.py").status_code == 404
    for page in ("/docs", "/redoc"):
        html = client.get(page).text
        assert "cdn.jsdelivr.net" not in html and "fonts.googleapis" not in html, page
        assert "/static-offline-docs/" in html, page
    assert client.get("/static-offline-docs/swagger-ui-bundle.js").status_code == 200


def test_cors_off_by_default_and_configurable():
    engine = FakeEngine()
    plain = TestClient(
        build_api(AppConfig.from_args({"server": {"auth": True}}), engine, engine, ENV)
    )
    pre = {"Origin": "https://dash.example.com", "Access-Control-Request-Method": "POST"}
    assert "access-control-allow-origin" not in plain.options("/v1/streams", headers=pre).headers
    cfg = AppConfig.from_args(
        {"server": {"auth": True, "cors_origins": ["https://dash.example.com"]}}
    )
    cors = TestClient(build_api(cfg, engine, engine, ENV))
    r = cors.options("/v1/streams", headers=pre)
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "https://dash.example.com"
    assert "access-control-allow-credentials" not in r.headers  # cookies stay same-site
    other = cors.options("/v1/streams", headers={**pre, "Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_cors_origin_must_be_an_origin():
    with pytest.raises(ValueError, match="cors_origins"):
        AppConfig.from_args({"server": {"cors_origins": ["https://a.example/path"]}})
