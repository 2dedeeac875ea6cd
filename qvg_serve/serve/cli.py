"""`qvg-serve serve`: run the Ray Serve app (local Ray if none is running) until interrupted.

Startup checks run before Ray starts (`preflight`): the HTTP port must be free (a bind test:
Serve's proxy binds with SO_REUSEPORT, so a second server on a used port would otherwise start
and split traffic with the first), and the auth settings must make sense (serve/keys.py).
SIGTERM and SIGINT drain (serve/drain.py), then stop Serve and Ray; the exit code is 0.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading
from collections.abc import Mapping
from pathlib import Path

APP_NAME = "qvg-serve"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        type=Path,
        help="serve_config.yaml (Serve's format) or a YAML of "
        "AppConfig args; default: AppConfig's defaults",
    )
    p.add_argument("--host", help="HTTP bind address (overrides the config)")
    p.add_argument("--port", type=int, help="HTTP port (overrides the config)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: start local)")


def load_args(path: Path | None) -> dict:
    """AppConfig args from a Serve config (its first application's args) or a plain args YAML."""
    if path is None:
        return {}
    import yaml

    doc = yaml.safe_load(path.read_text()) or {}
    if "applications" in doc:
        return dict(doc["applications"][0].get("args") or {})
    return dict(doc)


def start(
    args_dict: dict,
    host: str | None,
    port: int | None,
    address: str | None = None,
    num_cpus: int | None = None,
    quiet: bool = False,
) -> str:
    """Start Ray (if needed) and Serve, deploy the app; returns its base URL."""
    import ray
    from ray import serve

    from qvg_serve.serve.app import build_app
    from qvg_serve.serve.config import AppConfig

    server = dict(args_dict.get("server") or {})
    if host is not None:
        server["host"] = host
    if port is not None:
        server["port"] = port
    args_dict = {**args_dict, "server": server}
    cfg = AppConfig.from_args(args_dict)  # fail before starting Ray
    for line in preflight(cfg, os.environ):
        print(f"qvg-serve: warning: {line}", file=sys.stderr)
    if not ray.is_initialized():
        ray.init(
            address=address,
            num_cpus=num_cpus,
            include_dashboard=False,
            logging_level="ERROR" if quiet else "INFO",
            log_to_driver=not quiet,
        )
    serve.start(http_options={"host": cfg.server.host, "port": cfg.server.port})
    serve.run(build_app(args_dict), name=APP_NAME, route_prefix="/")
    shown = "127.0.0.1" if cfg.server.host in ("0.0.0.0", "::") else cfg.server.host
    return f"http://{shown}:{cfg.server.port}"


def preflight(cfg, environ: Mapping[str, str]) -> list[str]:
    """Checks that need no Ray: ValueError if the port is taken or auth cannot work; returns
    the warnings to print (keys set while auth is off)."""
    from qvg_serve.serve.keys import resolve_auth

    check_port(cfg.server.host, cfg.server.port)
    return resolve_auth(cfg.server, environ)[1]


def check_port(host: str, port: int) -> None:
    """ValueError naming the port if `host:port` cannot be bound (something listens there)."""
    family, kind, proto, _, addr = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is not "in use"
        try:
            s.bind(addr)
        except OSError as exc:
            raise ValueError(
                f"port {port} on {host} is in use ({exc.strerror}): another qvg-serve or "
                "program listens there; stop it or pick another with --port"
            ) from None


def run(args: argparse.Namespace) -> int:
    stopping = _StopSignals()
    try:
        url = start(load_args(args.config), args.host, args.port, args.address)
    except ValueError as exc:
        print(f"qvg-serve serve: {exc}", file=sys.stderr)
        return 2
    stopping.install()  # again: ray.init replaces the SIGTERM handler of the driver
    print(f"qvg-serve: serving {url}/v1 (OpenAPI: {url}/docs); Ctrl-C stops", file=sys.stderr)
    try:
        stopping.wait()
        _drain(load_args(args.config), stopping)
    finally:
        stop()
    return 0


class _StopSignals:
    """SIGTERM / SIGINT set an Event (the only thing a handler should do); counts them."""

    def __init__(self) -> None:
        self.event, self.count = threading.Event(), 0
        self.install()

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on)

    def _on(self, signum, frame) -> None:
        self.count += 1
        self.event.set()

    def wait(self) -> None:
        while not self.event.wait(1.0):  # a timeout keeps the main thread responsive
            pass


def _drain(args_dict: dict, stopping: _StopSignals) -> None:
    from ray import serve

    from qvg_serve.serve.app import INGRESS_NAME
    from qvg_serve.serve.config import AppConfig
    from qvg_serve.serve.drain import drain

    timeout = AppConfig.from_args(args_dict).server.drain_timeout_s
    print(f"qvg-serve: draining (up to {timeout:g} s; again to stop now)", file=sys.stderr)
    try:
        ingress = serve.get_deployment_handle(INGRESS_NAME, app_name=APP_NAME)
        drain(ingress, timeout, abort=lambda: stopping.count > 1)
    except Exception as exc:  # a broken app must still stop Ray
        print(f"qvg-serve: drain failed ({exc!r}); stopping", file=sys.stderr)


def stop() -> None:
    import ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()
