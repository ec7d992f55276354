"""Imports run one way, down DESIGN.md's package table: a module never imports a package above its own,
at module level, inside a function or for type checking only; inside `serving/` the same holds for its layers;
and no module imports itself through others (no import cycle anywhere in the library)."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# top first: each package may import only those after it
LAYERS = ["r2r", "evals", "data_gen", "testbed", "serving", "router"]
# inside serving/, top first (DESIGN.md): the pair and presets are serving/pair.py and serving/real_models.py
SERVING_LAYERS = ["http", "pair", "byte_level", "decoding", "backends"]


def package_of(module: str) -> str:
    """The table's package a module belongs to: `r2r.serving.pair` -> serving, `r2r.api` -> r2r, `os` -> os."""
    parts = module.split(".")
    return parts[1] if parts[0] == "r2r" and len(parts) > 1 and parts[1] in LAYERS else parts[0]


def imported_packages(path: Path) -> set[tuple[str, int]]:
    """(package, line) of every import in a file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {(package_of(alias.name), node.lineno) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add((package_of(node.module), node.lineno))
    return found


def test_no_import_goes_up_the_table() -> None:
    wrong = []
    for rank, package in enumerate(LAYERS):
        above = set(LAYERS[:rank])
        for path in sorted((REPO / package).rglob("*.py")):
            for name, line in imported_packages(path):
                if name in above:
                    wrong.append(f"{path.relative_to(REPO)}:{line} imports {name}, above {package}")
    assert not wrong, "imports that run up DESIGN.md's table:\n" + "\n".join(wrong)


def test_the_walk_sees_imports_inside_functions(tmp_path: Path) -> None:
    """The checker itself: an import inside a function body is found."""
    path = tmp_path / "m.py"
    path.write_text("import os\n\ndef f():\n    from r2r.evals.report import wilson\n    return wilson\n")
    assert ("evals", 4) in imported_packages(path)


def test_installed_names_map_to_the_tables_rows() -> None:
    """The checker itself: installed module names land in the right package and serving/ layer."""
    assert module_name(REPO / "serving" / "pair.py") == "r2r.serving.pair"
    assert module_name(REPO / "r2r" / "api.py") == "r2r.api"
    assert [package_of(m) for m in ("r2r.serving.pair", "r2r.api", "r2r", "torch.nn")] == ["serving", "r2r", "r2r", "torch"]
    assert [serving_layer(m) for m in ("r2r.serving.http.server", "r2r.serving.real_models", "r2r.router.model")] == [
        "http", "pair", None]


def module_name(path: Path) -> str:
    """The installed name: serving/pair.py is r2r.serving.pair (pyproject's package-dir), r2r/api.py is r2r.api."""
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    parts = parts[:-1] if parts[-1] == "__init__" else parts
    return ".".join(parts if parts[0] == "r2r" else ["r2r", *parts])


def library_modules() -> dict[str, Path]:
    return {module_name(path): path for package in LAYERS for path in sorted((REPO / package).rglob("*.py"))}


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """Library modules a file imports (`from a.b import c` names a.b.c when that is a module, else a.b)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found |= {f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module
                      for alias in node.names}
    return found & known


def serving_layer(module: str) -> str | None:
    parts = module.split(".")[1:]
    if len(parts) < 2 or parts[0] != "serving":
        return None
    return "pair" if parts[1] in ("pair", "real_models") else parts[1] if parts[1] in SERVING_LAYERS else None


def test_serving_layers_import_down_only() -> None:
    modules = library_modules()
    wrong = []
    for name, path in modules.items():
        layer = serving_layer(name)
        if layer is None:
            continue
        above = set(SERVING_LAYERS[: SERVING_LAYERS.index(layer)])
        wrong += [f"{name} imports {target} ({serving_layer(target)}, above {layer})"
                  for target in sorted(imported_modules(path, set(modules))) if serving_layer(target) in above]
    assert not wrong, "imports that run up serving/'s layers:\n" + "\n".join(wrong)


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module, or of one that imports itself (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_no_import_cycle() -> None:
    modules = library_modules()
    graph = {name: imported_modules(path, set(modules)) for name, path in modules.items()}
    cycles = import_cycles(graph)
    assert not cycles, "import cycles (type-checking imports count):\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_cycles() -> None:
    """The checker itself: a two-module cycle and a self-import are found, a chain is not."""
    assert import_cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert import_cycles({"a": {"a"}}) == [["a"]]
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
