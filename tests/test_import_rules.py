"""The dependency rule of DESIGN.md, checked in fresh interpreters."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "numpy", "triton", "ray")


def _loaded_after_import(module: str) -> list[str]:
    heavy = repr(HEAVY)
    code = f"import sys, json, {module}; "
    code += f"print(json.dumps([m for m in {heavy} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_scheduler_is_standard_library_only():
    assert _loaded_after_import("scheduler") == []


def test_scheduler_submodules_are_standard_library_only():
    import pkgutil

    import scheduler

    names = [f"scheduler.{m.name}" for m in pkgutil.iter_modules(scheduler.__path__)]
    for name in names:
        assert _loaded_after_import(name) == [], name


def test_kernels_does_not_import_serving_stack():
    code = (
        "import sys, kernels, pkgutil, importlib; "
        "[importlib.import_module('kernels.' + m.name) "
        "for m in pkgutil.iter_modules(kernels.__path__)]; "
        "print([m for m in ('ray', 'pydantic', 'fastapi', 'prometheus_client') "
        "if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_qvg_serve_rejects_foreign_kernels_package(tmp_path):
    fake = tmp_path / "kernels"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    code = "import qvg_serve"
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
        cwd=str(tmp_path),
    )
    assert res.returncode != 0
    assert "not qvg-serve's own 'kernels' package" in res.stderr
