"""Imports run one way, down DESIGN.md's package table: a module never imports a package above its own,
at module level or inside a function."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# top first: each package may import only those after it
LAYERS = ["r2r", "evals", "data_gen", "testbed", "serving", "router"]


def imported_packages(path: Path) -> set[tuple[str, int]]:
    """(top-level package, line) of every import in a file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {(alias.name.split(".")[0], node.lineno) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add((node.module.split(".")[0], node.lineno))
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
    path.write_text("import os\n\ndef f():\n    from evals.report import wilson\n    return wilson\n")
    assert ("evals", 4) in imported_packages(path)
