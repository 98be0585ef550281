"""The package's module-level import graph has no cycle (lazy imports inside functions are not counted)."""

from __future__ import annotations

import ast
from pathlib import Path

import bayesvlm_explain

PACKAGE = Path(bayesvlm_explain.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    base = module.split(".") if is_package else module.split(".")[:-1]
    if node.level:
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    # "from . import x" may name a submodule: count both the package and the submodule
    return [target] + [f"{target}.{a.name}" for a in node.names]


def import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        deps: set[str] = set()
        for node in ast.parse(path.read_text()).body:  # module level only
            if isinstance(node, ast.ImportFrom):
                deps.update(t for t in _resolve(name, path.name == "__init__.py", node) if t in files)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name in files)
        graph[name] = deps - {name}
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle():
    graph = import_graph()
    assert "bayesvlm_explain.model" in graph
    assert _find_cycle(graph) is None, " -> ".join(_find_cycle(graph) or [])


def test_cycle_finder_finds_a_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_math_layer_imports_no_application_code():
    """The posterior algebra is pure torch: no open_clip, gradio, captum or data code at module level."""
    graph = import_graph()
    for name in ("probcos", "predictive", "posterior", "numerics", "selection", "options"):
        module = f"bayesvlm_explain.{name}"
        tree = ast.parse((PACKAGE / f"{name}.py").read_text())
        external = {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names}
        external |= {(n.module or "").split(".")[0] for n in tree.body
                     if isinstance(n, ast.ImportFrom) and not n.level}
        assert not external & {"open_clip", "gradio", "captum", "matplotlib", "PIL"}, (module, external)
        app_layers = {"model", "explain", "ui", "studio", "fitting", "evaluation", "data", "cli", "adapters"}
        assert not {d for d in graph[module] if d.split(".")[1] in app_layers}, (module, graph[module])
