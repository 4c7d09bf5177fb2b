"""The dependency fences of STYLE.md, checked on the source: Ray lives in engine/ray*.py; no
TensorFlow in strategies, the pipeline or the loop; no import cycle; the round loop and the host know
no strategy, attack or stage by name; no module grows past ~350 lines."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "fedsim"
LIMIT = 350  # lines per module


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, type_checking: bool = False) -> set[str]:
    """Every module `path` imports (absolute names), at any depth; those under `if TYPE_CHECKING:`
    only when asked (they never run)."""
    tree = ast.parse(path.read_text())
    skipped = set()
    if not type_checking:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                skipped.update(id(n) for n in ast.walk(node))
    names = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            # `from fedsim.pipeline import attack` names a module too
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def tops(path: Path) -> set[str]:
    return {n.split(".")[0] for n in imports(path, type_checking=True)}


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PKG.rglob("*.py")}


def test_ray_is_imported_only_in_the_ray_engine():
    users = sorted(str(p.relative_to(PKG)) for p in PKG.rglob("*.py") if "ray" in tops(p))
    assert users == ["engine/ray.py", "engine/ray_host.py", "engine/ray_session.py"]


def test_no_tensorflow_or_ray_in_strategies_pipeline_and_coordinator():
    files = [
        *PKG.joinpath("strategies").glob("*.py"),
        *PKG.joinpath("pipeline").glob("*.py"),
        *PKG.joinpath("loop").glob("*.py"),
    ]
    for f in files:
        assert not {"tensorflow", "keras", "ray"} & tops(f), f


def test_no_import_cycles():
    """Modules of fedsim import each other without a cycle, counting imports inside functions (a
    deferred import that closes a cycle still ties the modules together) and those made for type
    checking only (a cycle there is one a reader follows too). Importing a module runs its
    packages' __init__ too; a module's own packages are not counted (they are executing already)."""
    known = modules()
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        edges = set()
        for target in imports(path, type_checking=True):
            if target not in known:
                continue
            parts = target.split(".")
            for i in range(2, len(parts) + 1):  # the target and its packages below fedsim
                edge = ".".join(parts[:i])
                if edge in known and not name.startswith(edge + ".") and edge != name:
                    edges.add(edge)
        graph[name] = edges
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*stack[stack.index(m) :], m]))
            if m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)


def test_the_round_loop_and_the_host_know_no_strategy_attack_or_stage_by_name():
    allowed = {"fedsim.strategies.base", "fedsim.strategies.aggregate", "fedsim.pipeline", "fedsim.pipeline.base"}
    # (the loop's modules name the generic parts only)
    for path in (*PKG.joinpath("loop").glob("*.py"), PKG / "engine" / "host.py"):
        named = {n for n in imports(path) if n.startswith(("fedsim.strategies", "fedsim.pipeline"))}
        assert named <= allowed | {
            f"{a}.{x}"
            for a in allowed
            for x in (
                "Aggregate",
                "DevicePlan",
                "State",
                "KeyedRows",
                "Strategy",
                "Weights",
                "reduce_partials",
                "PartialSum",
                "accumulator",
                "HostRound",
                "Pipeline",
                "Rejected",
                "ServerContext",
                "Upload",
                "UploadContext",
                "SimCost",
                "HONEST",
            )
        }, (path, named)
        text = path.read_text()
        for word in ("signflip", "labelflip", "alie", "scaffold", "fedprox", "Screen", "Attack", "Compress"):
            assert word not in text, (path, word)


def test_no_module_over_the_size_limit():
    long = {str(p.relative_to(PKG)): n for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > LIMIT}
    assert not long, f"modules over {LIMIT} lines: {long}"


def test_the_readme_layout_table_lists_every_package_and_nothing_else():
    readme = (PKG.parent / "README.md").read_text()
    table = readme[readme.index("## Layout") :].split("\n\n")[1]
    listed = {line.split("`")[1].rstrip("/") for line in table.splitlines()[2:]}
    packages = {p.parent.name for p in PKG.glob("*/__init__.py")}
    assert listed == packages
    assert not [p.name for p in PKG.glob("*.py") if p.name != "__init__.py"]  # no loose modules at the top


def test_the_run_folder_document_names_every_declared_column():
    from fedsim.results.schema import DEVICES, ROUNDS

    text = (PKG.parent / "docs" / "run-folder.md").read_text()
    assert not [c.name for c in ROUNDS + DEVICES if f"`{c.name}`" not in text]
