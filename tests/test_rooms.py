"""The rooms of qvg_serve and their doors (DESIGN.md "Layout and dependency rule").

- serve/ reaches the engine only through `Engine`'s public surface: no attribute of an engine
  that is one of its insides (scheduler, allocator, pool, tensor-side streams, decoder, ...).
- No import of a dependency's private modules (`ray.*._private`, any `_private` package).
- `qvg_serve.engine` and `qvg_serve.models` load neither Ray nor FastAPI.
"""

from __future__ import annotations

import ast
import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
PKG = ROOT / "qvg_serve"

ENGINE_INSIDES = {
    "scheduler", "alloc", "pool", "streams", "decoder", "mc", "model", "ws", "cfg",
    "_page_frame", "_launch", "_finish", "_prepare", "orders",
}  # fmt: skip
"""Attributes of an Engine that only the engine room may touch."""


def _engine_names(tree: ast.AST) -> set[str]:
    """Names that hold an engine: `engine`, `eng`, `self.engine`, `x.engine`."""
    return {"engine", "eng"}


def _reaches_inside(node: ast.Attribute) -> bool:
    base = node.value
    if isinstance(base, ast.Name):
        holder = base.id
    elif isinstance(base, ast.Attribute):
        holder = base.attr
    else:
        return False
    return holder in ("engine", "eng") and node.attr in ENGINE_INSIDES


def _violations(path: pathlib.Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    return [
        f"{path.relative_to(ROOT)}:{n.lineno}: .{n.attr} of an engine"
        for n in ast.walk(tree)
        if isinstance(n, ast.Attribute) and _reaches_inside(n)
    ]


def test_serve_uses_only_the_engine_door():
    found = [v for f in sorted((PKG / "serve").rglob("*.py")) for v in _violations(f)]
    assert found == [], "\n".join(found)


def test_the_door_check_catches_a_reach_inside(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f(self):\n    return self.engine.scheduler.streams, engine.alloc\n")
    assert len(_violations_at(bad)) == 2


def _violations_at(path: pathlib.Path) -> list[str]:
    tree = ast.parse(path.read_text())
    return [n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and _reaches_inside(n)]


def _private_imports(path: pathlib.Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    mods = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            mods += [a.name for a in n.names]
        elif isinstance(n, ast.ImportFrom) and n.module and n.level == 0:
            mods.append(n.module)
    return [m for m in mods if any(part.startswith("_") for part in m.split(".")[1:])
            and not m.startswith(("qvg_serve", "kernels", "scheduler", "__future__"))]  # fmt: skip


def test_no_private_imports_of_dependencies():
    found = {
        str(f.relative_to(ROOT)): bad
        for pkg in ("qvg_serve", "kernels", "scheduler")
        for f in sorted((ROOT / pkg).rglob("*.py"))
        if (bad := _private_imports(f))
    }
    assert found == {}


def test_the_private_import_check_catches_one(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from ray.serve._private.request_router import x\nimport ray._private.y\n")
    assert _private_imports(bad) == ["ray._private.y", "ray.serve._private.request_router"] or (
        sorted(_private_imports(bad)) == ["ray._private.y", "ray.serve._private.request_router"]
    )


def _loaded(module: str, names: tuple[str, ...]) -> list[str]:
    code = (
        f"import sys, json, {module}; print(json.dumps([m for m in {names!r} if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_engine_and_models_load_no_ray_and_no_fastapi():
    for module in ("qvg_serve.engine", "qvg_serve.models", "qvg_serve.generate"):
        assert _loaded(module, ("ray", "fastapi", "starlette", "pydantic")) == [], module


def test_the_api_module_loads_no_ray():
    assert _loaded("qvg_serve.serve.api", ("ray",)) == []
