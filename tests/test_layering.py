"""The house's one-way imports: every import statement of every file (inside functions and
`TYPE_CHECKING` blocks too) goes to the same or a lower layer, and no files import each other
in a loop."""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Lowest first; a module belongs to the first entry that is it or a package above it.
LAYERS = (
    ("protojax.errors", "protojax.imaging"),
    ("protojax.config", "protojax.prototypes", "protojax.nn"),
    ("protojax.data", "protojax.metrics", "protojax.explain"),
    ("protojax.train",),
    ("protojax.methods",),
    ("protojax", "experiments", "examples"),
)


def layer_of(module: str) -> int:
    best = None
    for level, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > len(best[1]):
                    best = (level, prefix)
    assert best is not None, f"{module} belongs to no layer; add it to LAYERS"
    return best[0]


def source_modules() -> dict[str, pathlib.Path]:
    modules = {}
    for top in ("protojax", "experiments", "examples"):
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def imports_of(name: str, path: pathlib.Path, modules: dict[str, pathlib.Path]) -> set[str]:
    """The repository modules that `name` imports, each `from X import Y` resolved to the
    submodule X.Y where Y is one, else to X."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = source_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def test_no_file_imports_a_higher_layer():
    upward = sorted(
        f"{name} (layer {layer_of(name)}) imports {target} (layer {layer_of(target)})"
        for name, targets in import_graph().items()
        for target in targets
        if layer_of(target) > layer_of(name)
    )
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_no_import_cycles():
    graph = import_graph()
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                cycles.append(" -> ".join([*stack[stack.index(target) :], target]))
            elif target not in state:
                visit(target, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_graph_sees_known_edges():
    """The parser resolves plain, `from`, submodule and function-level imports."""
    graph = import_graph()
    assert "protojax.train.protocol" in graph["protojax.methods.blackbox"]
    assert "protojax.errors" in graph["protojax.config"]
    assert "protojax.train.workdir" in graph["protojax.train.loop"]
