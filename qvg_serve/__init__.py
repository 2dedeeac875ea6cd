"""qvg-serve: serve auto-regressive video diffusion models from a paged, QVG-quantized KV pool.

`kernels` and `scheduler` are generic import names (PyPI has distributions called that), so
importing `qvg_serve` checks that both resolve to this project's packages and fails with a
clear message otherwise.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"


def _check_sibling(name: str) -> None:
    try:
        mod = importlib.import_module(name)
    except ImportError as exc:  # pragma: no cover - broken install
        raise ImportError(
            f"qvg_serve needs its sibling package {name!r}; reinstall qvg-serve "
            f"(pip install -e .): {exc}"
        ) from exc
    if getattr(mod, "QVG_SERVE_PACKAGE", None) != name:
        where = getattr(mod, "__file__", "?")
        raise ImportError(
            f"the module {name!r} imported from {where} is not qvg-serve's own {name!r} package "
            f"(a PyPI distribution with the same name shadows it): uninstall it "
            f"(pip uninstall {name}) or reinstall qvg-serve."
        )


_check_sibling("kernels")
_check_sibling("scheduler")
