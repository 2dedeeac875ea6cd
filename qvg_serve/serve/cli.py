"""`qvg-serve serve`: run the Ray Serve app (local Ray if none is running) until interrupted."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


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
    if not ray.is_initialized():
        ray.init(
            address=address,
            num_cpus=num_cpus,
            include_dashboard=False,
            logging_level="ERROR" if quiet else "INFO",
            log_to_driver=not quiet,
        )
    serve.start(http_options={"host": cfg.server.host, "port": cfg.server.port})
    serve.run(build_app(args_dict), name="qvg-serve", route_prefix="/")
    shown = "127.0.0.1" if cfg.server.host in ("0.0.0.0", "::") else cfg.server.host
    return f"http://{shown}:{cfg.server.port}"


def run(args: argparse.Namespace) -> int:
    try:
        url = start(load_args(args.config), args.host, args.port, args.address)
    except ValueError as exc:
        print(f"qvg-serve serve: {exc}", file=sys.stderr)
        return 2
    print(f"qvg-serve: serving {url}/v1 (OpenAPI: {url}/docs); Ctrl-C stops", file=sys.stderr)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        stop()
    return 0


def stop() -> None:
    import ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()
