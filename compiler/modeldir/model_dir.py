"""Writing a model directory: the graph with one external-data file, the tokenizer files of its
source, and the manifest with the stages that made it."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import onnx_ir as ir

from smoothrot.core.manifest import MODEL_FILE, Manifest
from smoothrot.core.pass_infra import PassReport

__all__ = ["COPIED_FILES", "SaveModelDirPass", "save_model", "write_model_dir"]

COPIED_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
)


def save_model(model: ir.Model, directory: Path) -> None:
    """Write ``model.onnx`` with all weights in one external ``model.onnx.data`` file."""
    ir.save(model, directory / MODEL_FILE, external_data=f"{MODEL_FILE}.data")


def write_model_dir(
    graph: ir.Model, source: Path, manifest: Manifest, out: Path, stages: list[dict[str, Any]]
) -> None:
    """A complete model directory: the graph (+ external data), ``source``'s tokenizer files and
    its manifest with ``stages`` appended."""
    save_model(graph, out)
    for f in COPIED_FILES:
        if (source / f).is_file():
            shutil.copy(source / f, out / f)
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
