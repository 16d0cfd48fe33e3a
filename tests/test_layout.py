"""The library's shape: no import circle, imports point down the layers, flows and tasks use
the sub-packages' public names, and the library never imports Prefect.

Read from the source (every ``import`` at any depth, function-level ones included), so a
lazy import cannot hide a circle.  Run alone: ``python -m pytest tests/test_layout.py``.
"""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("metric", "audit", "store", "evaluation", "generative")
# lower rank = lower layer; a module imports its own package or strictly lower ranks only
RANK = {"config": 0, "preprocess": 0, "_exports": 0, "io": 1, "metric": 2, "store": 3, "audit": 3,
        "generative": 3, "evaluation": 4, "api": 4}


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _exports(package: str) -> dict[str, str]:
    """name -> defining module of a sub-package's ``lazy_exports`` table."""
    tree = ast.parse((REPO / "deepssim" / package / "__init__.py").read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "lazy_exports")
    table = ast.literal_eval(call.args[1])
    return {name: f"deepssim.{package}.{module}" for module, names in table.items() for name in names}


def _targets(node: ast.AST, module: str, is_package: bool, modules: set[str]) -> set[str]:
    """Project modules an import statement reaches (a public name -> its defining module)."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name.split(".")[0] == "deepssim"}
    base = node.module or ""
    if node.level:
        anchor = module.split(".") if is_package else module.split(".")[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join(anchor + ([base] if base else []))
    if not base.startswith("deepssim"):
        return set()
    found = set()
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        parts = base.split(".")
        if sub in modules:
            found.add(sub)
        elif len(parts) == 2 and parts[1] in PACKAGES:
            found.add(_exports(parts[1]).get(alias.name, base))
        else:
            found.add(base)
    return found


def _graph(folder: str) -> dict[str, set[str]]:
    files = sorted((REPO / folder).rglob("*.py"))
    modules = {_module_name(p) for p in (REPO / "deepssim").rglob("*.py")}
    graph: dict[str, set[str]] = defaultdict(set)
    for path in files:
        name = _module_name(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[name] |= _targets(node, name, path.name == "__init__.py", modules) - {name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "deepssim"


def test_the_library_has_no_import_circle():
    graph = _graph("deepssim")
    assert "deepssim.evaluation.scoring" in graph["deepssim.evaluation.benchmark"]  # the graph sees imports
    assert _cycles(graph) == []


def test_imports_point_down_the_layers():
    wrong = [(m, t) for m, targets in _graph("deepssim").items() for t in targets
             if _layer(m) in RANK and _layer(t) in RANK and _layer(m) != _layer(t)
             and RANK[_layer(t)] >= RANK[_layer(m)]]
    assert wrong == []  # e.g. the metric knows nothing of the audit, the store or evaluation


def test_flows_and_tasks_use_public_names_only():
    private = [(m, t) for folder in ("flows", "tasks", "governance_reports") for m, targets in _graph(folder).items()
               for t in targets if _layer(t) in PACKAGES and m.split(".")[0] in ("flows", "tasks", "governance_reports")
               and not _imports_package_only(folder, m, t)]
    assert private == []


def _imports_package_only(folder: str, module: str, target: str) -> bool:
    """Whether ``module`` reached ``target`` through ``from deepssim.<package> import ...``."""
    path = REPO / Path(*module.split(".")).with_suffix(".py")
    if not path.exists():
        path = REPO / Path(*module.split(".")) / "__init__.py"
    package = f"deepssim.{_layer(target)}"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(package + "."):
            return False
        if isinstance(node, ast.Import) and any(a.name.startswith(package + ".") for a in node.names):
            return False
    return True


def test_the_library_never_imports_prefect():
    offenders = []
    for path in (REPO / "deepssim").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.relative_to(REPO)}: {n}" for n in names if n.split(".")[0] == "prefect"]
    assert offenders == []


def test_the_checks_can_fail():
    """The circle finder and the layer rule on a made-up graph with both faults."""
    graph = {"deepssim.metric.a": {"deepssim.audit.b"}, "deepssim.audit.b": {"deepssim.metric.a"}}
    assert _cycles(graph) == [["deepssim.audit.b", "deepssim.metric.a"]]
    assert RANK[_layer("deepssim.audit.b")] > RANK[_layer("deepssim.metric.a")]


def test_no_public_name_is_also_a_submodule():
    """Once ``deepssim.metric.train`` is imported, the package attribute ``train`` is that
    module, whatever the export table says: a public name must not be a module name."""
    for package in PACKAGES:
        submodules = {p.stem for p in (REPO / "deepssim" / package).glob("*.py")}
        assert not set(_exports(package)) & submodules, package
