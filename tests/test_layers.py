"""The layering rule is enforced: import-linter (what ``make lint`` runs) keeps the contract on the
tree as it is, and breaks it — naming the import — on a copy with one upward import added."""

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")

pytestmark = pytest.mark.skipif(not LINT.is_file(), reason="import-linter is not installed")


def _copy_tree(into: Path) -> Path:
    """``into/smoothrot/<sub>``: copies of the package folders ``pyproject.toml`` maps, under a
    namespace package (as installed: grimp analyses only top-level or namespace-held packages)."""
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    root = into / "smoothrot"
    root.mkdir(parents=True)
    for package, folder in setuptools["package-dir"].items():
        ignore = shutil.ignore_patterns("__pycache__", "*.so")
        shutil.copytree(REPO / folder, root / package.rpartition(".")[2], ignore=ignore)
    return root


def _lint(tree: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(tree.parent)}
    config = str(REPO / "pyproject.toml")
    return subprocess.run(
        [str(LINT), config, "--no-cache"],
        cwd=tree.parent, env=env, capture_output=True, text=True,
    )  # fmt: skip


def test_the_tree_keeps_the_layers_and_an_upward_import_breaks_them(tmp_path):
    tree = _copy_tree(tmp_path / "copy")
    kept = _lint(tree)
    assert kept.returncode == 0, kept.stdout[-2000:]
    assert "1 kept, 0 broken" in kept.stdout
    victim = tree / "passes" / "norm_div.py"
    upward = "\nfrom smoothrot.compiler.config import Recipe  # noqa: F401\n"
    victim.write_text(victim.read_text() + upward)
    broken = _lint(tree)
    assert broken.returncode != 0
    assert "smoothrot.passes is not allowed to import smoothrot.compiler" in broken.stdout
    assert "smoothrot.passes.norm_div -> smoothrot.compiler.config" in broken.stdout
