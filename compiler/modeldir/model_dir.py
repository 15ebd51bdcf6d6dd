"""Writing a model directory: the graph with one external-data file, the tokenizer files of its
source, and the manifest with the stages that made it.

Only the files in :data:`COPIED_FILES` (tokenizer data, never code) ever go from a source into
an output, and a ``tokenizer_config.json`` goes without any ``auto_map``."""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import onnx_ir as ir

from smoothrot.compiler.modeldir.untrusted import LICENSE_FILES, TOKENIZER_FILES, read_json
from smoothrot.core.manifest import MODEL_FILE, Manifest
from smoothrot.core.pass_infra import PassReport

__all__ = [
    "COPIED_FILES",
    "SaveModelDirPass",
    "copy_licenses",
    "copy_tokenizer_files",
    "save_model",
    "save_tokenizer",
    "write_model_dir",
    "write_model_files",
]

# data only: no *.py, no library, nothing else of a source
COPIED_FILES = TOKENIZER_FILES + LICENSE_FILES


def save_model(model: ir.Model, directory: Path) -> None:
    """Write ``model.onnx`` with all weights in one external ``model.onnx.data`` file."""
    ir.save(model, directory / MODEL_FILE, external_data=f"{MODEL_FILE}.data")


def copy_tokenizer_files(source: Path, out: Path) -> None:
    """Copy ``source``'s tokenizer files (:data:`COPIED_FILES` only) into ``out``; an
    ``auto_map`` (a pointer to Python code) is dropped from ``tokenizer_config.json``."""
    for name in COPIED_FILES:
        if (source / name).is_file():
            shutil.copy(source / name, out / name)
    config = out / "tokenizer_config.json"
    if config.is_file():
        data = read_json(config)  # a corrupt one is refused, naming it
        if data.pop("auto_map", None) is not None:
            config.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def copy_licenses(licenses: tuple[Path, ...], out: Path) -> None:
    """A source's terms-of-use files (names in :data:`LICENSE_FILES`) into ``out``."""
    for path in licenses:
        if path.name in LICENSE_FILES and path.is_file():
            shutil.copy(path, out / path.name)


def save_tokenizer(tokenizer: Any, out: Path) -> None:
    """``tokenizer.save_pretrained`` into ``out``, keeping only :data:`COPIED_FILES` (whatever
    else it would write, such as a custom tokenizer's Python file, never reaches ``out``)."""
    with tempfile.TemporaryDirectory(prefix=".tokenizer-", dir=out) as tmp:
        tokenizer.save_pretrained(tmp)
        copy_tokenizer_files(Path(tmp), out)


def write_model_dir(
    graph: ir.Model, source: Path, manifest: Manifest, out: Path, stages: list[dict[str, Any]]
) -> None:
    """A complete model directory: the graph (+ external data), ``source``'s tokenizer files and
    its manifest with ``stages`` appended."""
    save_model(graph, out)
    write_model_files(source, manifest, out, stages)


def write_model_files(
    source: Path, manifest: Manifest, out: Path, stages: list[dict[str, Any]]
) -> None:
    """What a model directory holds beside its graph: ``source``'s tokenizer files and its
    manifest with ``stages`` appended."""
    copy_tokenizer_files(source, out)
    replace(manifest, stages=manifest.stages + stages).save(out)


class SaveModelDirPass(ir.passes.InPlacePass):
    """A pipeline step that writes the graph as it is into a new model directory ``out`` (for a
    calibration or a float reference later in the pipeline); the graph is unchanged."""

    name = "save_model_dir"

    def __init__(self, out: Path, source: Path, manifest: Manifest) -> None:
        super().__init__()
        self.out, self.source, self.manifest = Path(out), Path(source), manifest

    def call(self, model: ir.Model) -> PassReport:
        self.out.mkdir(parents=True)
        write_model_dir(model, self.source, self.manifest, self.out, [])
        return PassReport(model, False, {"directory": str(self.out)})
