"""The dependency fences of STYLE.md: Ray lives in engine/ray.py; no TensorFlow in strategies or the loop."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "fedsim"


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_ray_is_imported_only_in_engine_ray():
    users = sorted(str(p.relative_to(PKG)) for p in PKG.rglob("*.py") if "ray" in imported_modules(p))
    assert users == ["engine/ray.py"]


def test_no_tensorflow_or_ray_in_strategies_and_coordinator():
    files = [*PKG.joinpath("strategies").glob("*.py"), PKG / "coordinator.py"]
    for f in files:
        assert not {"tensorflow", "keras", "ray"} & imported_modules(f), f
