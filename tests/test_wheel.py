"""The installed package, without the repository: a wheel claims one import name (`r2r`, never the generic
`router`, `serving`, `evals`, ...) and carries the embedded pair, so `r2r generate` answers from it alone."""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROMPT = "Ava has 12 apples. Then Ava finds 5 more apples. How many apples does Ava have now?"


@functools.cache
def tracked_files() -> list[str]:
    return subprocess.run(["git", "ls-files"], cwd=REPO, check=True, capture_output=True, text=True).stdout.split()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from the tracked files (as a fresh clone has them), unpacked as pip would install it."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    for name in tracked_files():
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(root / "dist"), str(source)], check=True, capture_output=True)
    (wheel,) = (root / "dist").glob("r2r-*.whl")
    zipfile.ZipFile(wheel).extractall(root / "site")
    return root / "site"


def test_the_wheel_claims_one_import_name(site: Path) -> None:
    tops = {p.name for p in site.iterdir() if not p.name.endswith(".dist-info")}
    assert tops == {"r2r"}
    (info,) = site.glob("r2r-*.dist-info")
    assert (info / "top_level.txt").read_text().split() == ["r2r"]


def test_the_wheel_carries_every_library_module(site: Path) -> None:
    """A new subpackage must be listed in pyproject's packages: its modules would be missing from the wheel."""
    folders = ("r2r", "router", "serving", "evals", "testbed", "data_gen")
    library = {name for name in tracked_files() if name.endswith(".py") and name.split("/")[0] in folders}
    shipped = {str(p.relative_to(site / "r2r")) for p in (site / "r2r").rglob("*.py")}
    assert {name.removeprefix("r2r/") for name in library} <= shipped


def test_the_wheel_carries_the_embedded_pair(site: Path) -> None:
    committed = {Path(name).relative_to("models") for name in tracked_files() if name.startswith("models/testbed/")}
    assert committed, "no committed testbed files"
    shipped = {p.relative_to(site / "r2r" / "models") for p in (site / "r2r" / "models").rglob("*") if p.is_file()}
    assert committed <= shipped, sorted(committed - shipped)[:5]


def run_generate(cwd: Path, env: dict[str, str]) -> str:
    out = subprocess.run([sys.executable, "-m", "r2r", "generate", "--max-tokens", "12", PROMPT], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.split("\n12 tokens")[0]  # the text, without the timing line


def test_the_installed_package_answers_outside_the_repository(site: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-c", "import r2r.serving.pair as p; print(p.__file__, p.MODELS_DIR)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert all(Path(p).is_relative_to(site) for p in where), where
    assert run_generate(tmp_path, env) == run_generate(REPO, dict(os.environ))
