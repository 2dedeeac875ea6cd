"""Benchmarks behind `qvg-serve bench NAME` (benchmarks are not tests).

Each module here exposes `add_arguments(parser)` and `run(args) -> int`, and is registered in
`qvg_serve.cli.BENCHES`.
"""
