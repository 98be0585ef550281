"""The package's import structure: no module-level cycle (lazy imports inside functions are not counted), layers
that only import downwards at module level, no build-time or benchmark code anywhere in the runtime package, and
``evaluation`` and ``explain`` independent of each other."""

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


def _runtime_nodes(tree: ast.Module) -> list[ast.AST]:
    """Every node of ``tree`` except those under ``if TYPE_CHECKING:`` (imports for annotations only)."""
    guarded = [n for n in ast.walk(tree) if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test)]
    skipped = {id(n) for node in guarded for n in ast.walk(node)}
    return [n for n in ast.walk(tree) if id(n) not in skipped]


def imported_names(module_level: bool = True) -> dict[str, set[str]]:
    """Every absolute name each package module imports (relative imports resolved): at module level only, or
    anywhere the import runs (inside functions and classes too, not under ``if TYPE_CHECKING:``) with
    ``module_level=False``."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    out: dict[str, set[str]] = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text())
        names: set[str] = set()
        for node in tree.body if module_level else _runtime_nodes(tree):
            if isinstance(node, ast.ImportFrom):
                names.update(_resolve(name, path.name == "__init__.py", node))
            elif isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
        out[name] = names
    return out


def import_graph(module_level: bool = True) -> dict[str, set[str]]:
    """Package module -> the package modules it imports (see :func:`imported_names`)."""
    names = imported_names(module_level)
    return {name: {t for t in deps if t in names} - {name} for name, deps in names.items()}


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


def test_no_import_cycle_through_lazy_imports():
    """Imports inside functions (deferred for speed or optional dependencies) close no cycle either: every
    module could import its dependencies at the top."""
    graph = import_graph(module_level=False)
    assert "bayesvlm_explain.pretrained.registry" in graph["bayesvlm_explain.posterior"]  # a lazy one is seen
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


# Layers of the runtime package, lowest first; a module may import (at module level) only its own layer or lower
# ones. The package root and the user-facing commands sit on top.
LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"options", "numerics", "probcos", "predictive", "posterior", "selection", "estimation", "marglik"}),
    frozenset({"inputs", "data", "adapters", "encoding", "loading", "head", "pretrained", "bundled", "model"}),
    frozenset({"fitting", "evaluation", "explain", "yardstick"}),
    frozenset({"ui", "cli", "space", ""}),
)
OUTSIDE_THE_LIBRARY = ("tools", "benchmarks", "scripts", "_build", "tests")


def _layer(module: str) -> int:
    part = module.split(".")[1] if "." in module else ""
    found = [i for i, layer in enumerate(LAYERS) if part in layer]
    assert found, f"{module}: give bayesvlm_explain.{part} a layer in tests/test_structure.py LAYERS"
    return found[0]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """``"a -> b"`` for every import of a higher layer by a lower one."""
    return sorted(f"{a} -> {b}" for a, deps in graph.items() for b in deps if _layer(b) > _layer(a))


def test_no_module_level_upward_import():
    graph = import_graph()
    assert upward_imports(graph) == []


def test_upward_import_check_finds_one():
    graph = {"bayesvlm_explain.posterior": {"bayesvlm_explain.ui.app"}, "bayesvlm_explain.ui.app": set(),
             "bayesvlm_explain.model": {"bayesvlm_explain.numerics"}, "bayesvlm_explain.numerics": set()}
    assert upward_imports(graph) == ["bayesvlm_explain.posterior -> bayesvlm_explain.ui.app"]


def test_runtime_imports_no_build_or_benchmark_code():
    """Nothing in the package imports tools/, benchmarks/, scripts/ or a _build package, not even lazily."""
    assert not any(p.name == "_build" for p in PACKAGE.rglob("*") if p.is_dir())
    offending = sorted(f"{name} imports {dep}" for name, deps in imported_names(module_level=False).items()
                       for dep in deps if set(dep.split(".")) & set(OUTSIDE_THE_LIBRARY))
    assert offending == []


def test_evaluation_and_explain_do_not_import_each_other():
    graph = import_graph(module_level=False)
    for a, b in (("evaluation", "explain"), ("explain", "evaluation")):
        crossing = sorted(f"{m} -> {d}" for m, deps in graph.items() if m.startswith(f"bayesvlm_explain.{a}")
                          for d in deps if d.startswith(f"bayesvlm_explain.{b}"))
        assert crossing == [], crossing
