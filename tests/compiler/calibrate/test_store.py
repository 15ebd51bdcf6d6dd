"""compile_model's calibration cache: keyed by the export and by smoothrot's own sources."""

from __future__ import annotations

from pathlib import Path

import smoothrot.passes
from smoothrot.compiler.calibrate.store import statistics_store
from smoothrot.core.manifest import MANIFEST_NAME


def _export(root: Path, text: str) -> Path:
    root.mkdir()
    (root / MANIFEST_NAME).write_text(text)
    return root


def test_same_export_and_code_share_a_folder(tmp_path) -> None:
    export = _export(tmp_path / "a", '{"stages": [1.0]}')
    first = statistics_store(tmp_path / "cache", export)
    assert first == statistics_store(tmp_path / "cache", export)
    assert first.parent == tmp_path / "cache"


def test_another_export_gets_another_folder(tmp_path) -> None:
    a = _export(tmp_path / "a", '{"stages": [1.0]}')
    b = _export(tmp_path / "b", '{"stages": [2.0]}')
    assert statistics_store(tmp_path, a) != statistics_store(tmp_path, b)


def test_other_pass_sources_get_another_folder(tmp_path, monkeypatch) -> None:
    export = _export(tmp_path / "a", "{}")
    before = statistics_store(tmp_path, export)
    other = tmp_path / "passes"
    other.mkdir()
    (other / "smooth.py").write_text("ALPHA = 0.5\n")
    monkeypatch.setattr(smoothrot.passes, "__file__", str(other / "__init__.py"))
    assert statistics_store(tmp_path, export) != before
