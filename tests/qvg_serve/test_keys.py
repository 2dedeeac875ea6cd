"""API-key sources, the auth decision at startup, and key rotation through the keys file."""

from __future__ import annotations

import os

import pytest

from qvg_serve.serve.config import AppConfig
from qvg_serve.serve.keys import KeyTable, resolve_auth

ENV = {"QVG_API_KEYS": "k-env:acme"}


def server(**kw):
    return AppConfig.from_args({"server": kw}).server


@pytest.mark.parametrize(
    ("settings", "environ", "on"),
    [
        ({"host": "127.0.0.1"}, {}, False),  # the demo: loopback, no keys, open
        ({"host": "127.0.0.1"}, ENV, True),  # keys given on loopback are checked, not ignored
        ({"host": "0.0.0.0"}, ENV, True),
        ({"host": "0.0.0.0", "auth": False}, {}, False),
        ({"auth": True}, ENV, True),
    ],
)
def test_auth_resolution(settings, environ, on):
    assert resolve_auth(server(**settings), environ) == (on, [])


def test_keys_while_auth_off_warn_and_say_what_to_do():
    on, warnings = resolve_auth(server(auth=False), ENV)
    assert not on and len(warnings) == 1
    assert "$QVG_API_KEYS" in warnings[0] and "server.auth" in warnings[0]
    assert "k-env" not in warnings[0]  # never the key itself


@pytest.mark.parametrize("settings", [{"auth": True}, {"host": "0.0.0.0"}])
def test_auth_on_without_any_key_is_a_startup_error_naming_the_variables(settings):
    with pytest.raises(ValueError, match=r"\$QVG_API_KEYS or \$QVG_API_KEYS_FILE") as err:
        resolve_auth(server(**settings), {})
    assert "server.auth = false" in str(err.value)


def test_keys_from_the_file_count_as_set(tmp_path):
    path = tmp_path / "keys"
    path.write_text("k-file:globex\n")
    assert resolve_auth(server(auth=True), {"QVG_API_KEYS_FILE": str(path)}) == (True, [])


def test_unreadable_keys_file_at_startup_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="API keys file"):
        KeyTable(server(), {"QVG_API_KEYS_FILE": str(tmp_path / "missing")})


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def rewrite(path, text: str, bump_ns: int) -> None:
    """Write and move the mtime on, as a Secret update does (fast writes may share an mtime)."""
    path.write_text(text)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + bump_ns))


def test_rotation_is_picked_up_after_the_reload_period_without_a_restart(tmp_path):
    path, clock = tmp_path / "keys", Clock()
    path.write_text("old-key:acme, other:globex")
    table = KeyTable(server(api_keys_reload_s=5), {**ENV, "QVG_API_KEYS_FILE": str(path)}, clock)
    assert (table.tenant("old-key"), table.tenant("other"), table.tenant("k-env")) == (
        "acme",
        "globex",
        "acme",
    )
    rewrite(path, "new-key:acme\nother:globex\n", 10**9)
    clock.t = 4.9  # within the period: the file is not looked at
    assert table.tenant("old-key") == "acme" and table.tenant("new-key") is None
    clock.t = 5.0
    assert table.tenant("new-key") == "acme" and table.tenant("old-key") is None
    assert table.tenant("k-env") == "acme"  # the environment's keys stay


def test_a_broken_rotation_keeps_the_previous_keys(tmp_path):
    path, clock = tmp_path / "keys", Clock()
    path.write_text("good:acme")
    table = KeyTable(server(api_keys_reload_s=1), {"QVG_API_KEYS_FILE": str(path)}, clock)
    rewrite(path, "half-written-without-a-tenant", 10**9)
    clock.t = 1.0
    assert table.tenant("good") == "acme"
    path.unlink()
    clock.t = 2.0
    assert table.tenant("good") == "acme"
    rewrite(path, "fixed:acme", 2 * 10**9)
    clock.t = 3.0
    assert table.tenant("fixed") == "acme" and table.tenant("good") is None
