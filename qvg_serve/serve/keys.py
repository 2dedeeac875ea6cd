"""API keys: where they come from, whether auth is on, and reloading them without a restart.

Sources ("key:tenant" pairs; the file may separate them by commas, spaces or newlines; a key
in both maps to the file's tenant):

    $QVG_API_KEYS        (server.api_keys_env)       read once, at startup
    $QVG_API_KEYS_FILE   (server.api_keys_file_env)  a path, e.g. a mounted Kubernetes Secret;
                                                     re-read when its mtime or size changes,
                                                     looked at no more than every
                                                     server.api_keys_reload_s seconds

Auth, resolved once at startup (`resolve_auth`):

    auth: true          on; no key in any source is a startup error naming both variables
    auth: false         off; keys set anyway are a startup warning (they would be ignored)
    auth: "auto"        on when the host is not loopback OR any key is set (keys given are
                        meant to be checked); off only on loopback with no keys (the demo)

A rotation that leaves the file unreadable or malformed keeps the previous keys (and logs why):
a half-written Secret must not lock every client out.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Mapping

from qvg_serve.serve.config import ServerSettings, parse_api_keys

log = logging.getLogger("qvg_serve.serve.keys")


def resolve_auth(server: ServerSettings, environ: Mapping[str, str]) -> tuple[bool, list[str]]:
    """(auth on?, warnings to print at startup); ValueError if auth is on with no key at all."""
    has_keys = bool(KeyTable(server, environ).size)
    sources = " or ".join(f"${v}" for v in _source_vars(server)) or "no key source"
    if server.auth is False:
        warn = [] if not has_keys else [
            f"server.auth = false but {sources} holds API keys: they are ignored and every "
            "request is tenant 'default'. Set server.auth to true or \"auto\" to check them, "
            "or unset the keys."
        ]  # fmt: skip
        return False, warn
    on = server.auth_enabled(keys_set=has_keys)
    if on and not has_keys:
        why = "server.auth = true" if server.auth is True else f"server.host = {server.host}"
        raise ValueError(
            f"{why} turns API-key auth on, but {sources} holds no key, so every request "
            'would get 401. Set it ("key:tenant,key:tenant") or set server.auth = false.'
        )
    return on, []


def _source_vars(server: ServerSettings) -> list[str]:
    return [v for v in (server.api_keys_env, server.api_keys_file_env) if v]


class KeyTable:
    """API key -> tenant, from the environment and (re-read on change) the keys file."""

    def __init__(
        self,
        server: ServerSettings,
        environ: Mapping[str, str],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        env = server.api_keys_env
        self._env = parse_api_keys(environ.get(env, ""), env) if env else {}
        var = server.api_keys_file_env
        self.path = (environ.get(var) or None) if var else None
        self.every_s, self.clock = server.api_keys_reload_s, clock
        self._file: dict[str, str] = {}
        self._seen: tuple[int, int] | None = None  # (mtime_ns, size) of the file last read
        self._checked = -math.inf
        if self.path is not None:
            self._reload(strict=True)

    @property
    def size(self) -> int:
        return len(self._env.keys() | self._file.keys())

    def items(self):
        """(key, tenant) pairs now (the file's win over the environment's)."""
        if self.path is not None and self.clock() - self._checked >= self.every_s:
            self._reload(strict=False)
        return ({**self._env, **self._file}).items()

    def tenant(self, key: str) -> str | None:
        """The tenant of `key`, or None; may first re-read a changed keys file."""
        if self.path is not None and self.clock() - self._checked >= self.every_s:
            self._reload(strict=False)
        return self._file.get(key) or self._env.get(key)

    def _reload(self, strict: bool) -> None:
        """Re-read the file if it changed. `strict` (startup): a bad file is an error;
        later a bad file keeps the previous keys."""
        assert self.path is not None
        self._checked = self.clock()
        try:
            st = os.stat(self.path)  # follows the symlink a Secret mount swaps on update
            if (st.st_mtime_ns, st.st_size) == self._seen:
                return
            with open(self.path, encoding="utf-8") as f:
                table = parse_api_keys(",".join(f.read().split()), self.path)
        except (OSError, ValueError) as exc:
            if strict:
                raise ValueError(f"API keys file: {exc}") from None
            log.warning(
                "API keys file %s not reloaded, keeping the previous keys: %s", self.path, exc
            )
            return
        self._file, self._seen = table, (st.st_mtime_ns, st.st_size)
        log.info("API keys file %s: %d keys", self.path, len(table))
