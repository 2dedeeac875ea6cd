"""The `qvg-serve` command line: `generate`, `serve`, `demo` and `bench NAME ...`."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# bench name -> (module under qvg_serve.bench, one-line help). Modules are imported only when
# their subcommand runs, so `qvg-serve bench scheduler` never imports torch.
BENCHES: dict[str, tuple[str, str]] = {
    "codec": ("codec", "every KV codec on the same K/V, side by side with the official QVG"),
    "capacity": ("capacity", "frames of KV history that fit in a budget, per page format"),
    "attention": ("attention", "one chunk's attention over paged (quantized) history vs dense"),
    "scheduler": ("scheduler", "schedule()+update() timings and simulated capacity (no torch)"),
    "quality": ("quality", "long videos per codec vs the bf16-cache video: PSNR, SSIM, drift"),
    "ladder": ("ladder", "real engine in a fixed arena: bf16-only paging vs the QVG ladder"),
    "e2e": ("e2e", "time per chunk through the pool, bf16 vs QVG pages; N streams batched"),
    "serve": ("serve", "concurrent HTTP streams: time to first frame, inter-chunk p50/p99"),
    "chaos": ("chaos", "streams through kill -9 of engine replicas: completed vs lost"),
}


# command -> (module under qvg_serve, one-line help); modules declare their own arguments.
COMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("generate", "offline generation (no Ray): one MP4 per prompt, all batched"),
    "serve": ("serve.cli", "run the Ray Serve app (HTTP API under /v1) until Ctrl-C"),
    "demo": ("demo", "local Ray, tiny model, N streams over HTTP: MP4s + KV memory report"),
}


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qvg-serve", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, add_help=False)
        sub.set_defaults(_module=module)
    bench = commands.add_parser("bench", help="run a benchmark (not a test)")
    benches = bench.add_subparsers(dest="bench", required=True)
    for name, (module, help_text) in BENCHES.items():
        sub = benches.add_parser(name, help=help_text, description=help_text, add_help=False)
        # Arguments are declared by the module; import it lazily only for the chosen one.
        sub.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _build_parser()
    # Two passes: the first finds the subcommand, the second parses its own arguments.
    known, _ = parser.parse_known_args(argv)
    if known.command == "bench":
        mod = importlib.import_module(f"qvg_serve.bench.{known._module}")
        sub = argparse.ArgumentParser(prog=f"qvg-serve bench {known.bench}")
        mod.add_arguments(sub)
        args = sub.parse_args(argv[argv.index(known.bench) + 1 :])
        return int(mod.run(args) or 0)
    if known.command in COMMANDS:
        mod = importlib.import_module(f"qvg_serve.{known._module}")
        sub = argparse.ArgumentParser(prog=f"qvg-serve {known.command}", description=mod.__doc__)
        mod.add_arguments(sub)
        args = sub.parse_args(argv[argv.index(known.command) + 1 :])
        return int(mod.run(args) or 0)
    parser.error(f"unknown command {known.command!r}")  # pragma: no cover
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
