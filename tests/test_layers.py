"""The package's import graph: no cycles (function-level imports included) and nothing imports the CLI."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cringe"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Every cringe module `path` imports anywhere in its body (top level, functions, methods)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                root = ".".join(base + ([node.module] if node.module else []))
            else:
                root = node.module or ""
            # `from . import rundir` imports a module; `from .files import write_json` imports from one.
            targets = [f"{root}.{a.name}" if f"{root}.{a.name}" in modules else root for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in modules and t != name}
    return found


def import_graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(f) for f in files}
    return {module_name(f): imports_of(f, modules) for f in files}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_walker_sees_function_level_and_relative_imports():
    graph = import_graph()
    assert "cringe.trainer" in graph["cringe.loop.executor"]  # imported inside TrainJob.run
    assert "cringe.models" in graph["cringe.testbeds.sentiment"]  # `from ..models import ...` in a function
    assert "cringe.loop.rundir" in graph["cringe.demo.pipeline"]  # `from . import rundir`


def test_find_cycle_detects_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_nothing_imports_the_cli():
    importers = sorted(
        m
        for m, deps in import_graph().items()
        if not m.startswith("cringe.cli")
        and m != "cringe.__main__"
        and any(d == "cringe.cli" or d.startswith("cringe.cli.") for d in deps)
    )
    assert importers == []


def test_the_project_points_only_inside_itself():
    root = PACKAGE.parent
    texts = [root / "README.md", *root.glob("docs/*.md"), *PACKAGE.rglob("*.py"), *root.glob("bench/**/*.py")]
    offenders = [
        str(p.relative_to(root))
        for p in texts
        if "../shared" in p.read_text() or "DESIGN §" in p.read_text() or "DESIGN.md" in p.read_text()
    ]
    assert offenders == []


def test_no_runtime_check_is_an_assert():
    # `python -O` strips assert statements: an invariant the package relies on must raise for real.
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Assert)
    ]
    assert offenders == []


def test_optional_dependencies_are_imported_where_they_are_used():
    # A top-level import of an optional package breaks every verb where it is absent: `make vllm`'s environment
    # has no tensorboard, and the sampling stage imported the loop's trackers at start-up.
    import sys

    core = {
        "torch",
        "transformers",
        "datasets",
        "accelerate",
        "safetensors",
        "yaml",
        "tqdm",
        "tokenizers",
        "jinja2",
        "numpy",
        "markdown",
        "cringe",
        "__future__",
    }
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and node.level:
                continue
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            for name in names:
                optional = name.split(".")[0] not in core | set(sys.stdlib_module_names)
                if optional or name.startswith("torch.utils.tensorboard"):
                    offenders.append(f"{path.relative_to(PACKAGE.parent)}: {name}")
    assert offenders == []
