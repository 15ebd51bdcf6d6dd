"""Helpers shared by test modules (fixtures are in the conftest files): model directories made
from a transformed graph, runs of pass lists, the TorchGraph-vs-ONNX-Runtime check, compiles."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx_ir as ir

from smoothrot.compiler.compile import compile_model
from smoothrot.compiler.config import CompileConfig, EngineConfig, Recipe
from smoothrot.compiler.modeldir.model_dir import save_model
from smoothrot.compiler.runtime.ort_runner import OrtDecoder
from smoothrot.core.manifest import Manifest, load_manifest
from smoothrot.passes.model_map import build_model_map
from smoothrot.passes.quantize_weights import Algorithm, GroupingMode, WeightQuantConfig

__all__ = [
    "SMALL_ENGINE",
    "check_torch_logits_match_ort",
    "compile_rtn",
    "load_graph",
    "norm_gammas",
    "run_passes",
    "save_copy",
]

# Engine profiles small enough for a tiny model's build in seconds.
SMALL_ENGINE = EngineConfig(max_prompt=64, max_context=128, opt_prompt=16, opt_context=64)


def save_copy(model: ir.Model, src: Path, dst: Path, dtype: str | None = None) -> Path:
    """``src`` (a model directory) copied to ``dst`` with ``model`` as its graph (and, given
    ``dtype``, that dtype in its manifest)."""
    shutil.copytree(src, dst)
    for f in ("model.onnx", "model.onnx.data"):
        (dst / f).unlink()
    save_model(model, dst)
    if dtype is not None:
        manifest = dst / "smoothrot.json"
        manifest.write_text(manifest.read_text().replace('"dtype": "fp32"', f'"dtype": "{dtype}"'))
    return dst


def run_passes(
    src: Path, tmp_path: Path, passes: list, ids: np.ndarray
) -> tuple[ir.Model, list[bool], np.ndarray]:
    """Run ``passes`` in order on the export in ``src``: (model, each ``modified``, logits)."""
    model = ir.load(src / "model.onnx")
    modified = [p(model).modified for p in passes]
    return model, modified, OrtDecoder(save_copy(model, src, tmp_path / "m")).forward(ids)[0]


def norm_gammas(model: ir.Model, dims) -> list[np.ndarray]:
    return [
        np.asarray(n.gamma.const_value.numpy())
        for n, _ in build_model_map(model, dims).norm_consumers()
    ]


def load_graph(directory: Path) -> tuple[ir.Model, Manifest]:
    manifest = load_manifest(directory)
    return ir.load(str(directory / manifest.model_file)), manifest


def check_torch_logits_match_ort(directory: Path, batch: int, seq: int) -> float:
    """TorchGraph's logits of ``directory`` vs ONNX Runtime's (graph as written), on random ids."""
    import torch

    from smoothrot.compiler.tune.torch_graph import TorchGraph, torch_feeds

    model, manifest = load_graph(directory)
    ids = np.random.default_rng(0).integers(0, manifest.dims.vocab, (batch, seq))
    ref, _ = OrtDecoder(directory, optimize=False).forward(ids)
    with torch.no_grad():
        ours = TorchGraph(model).run(torch_feeds(manifest, ids), keep=["logits"])["logits"]
    error = float(np.abs(ours.numpy() - ref).max())
    assert error <= 1e-4 * np.abs(ref).max(), error
    return error


def compile_rtn(
    onnx_dir: Path, out: Path, recipe: Recipe, grouping: GroupingMode, group: int = 32,
    tokens: int = 1024,
) -> Path:  # fmt: skip
    """A quick compile (RTN weights, no perplexity) for the target tests."""
    weights = WeightQuantConfig(grouping, group, Algorithm.RTN)
    config = CompileConfig(recipe, weights=weights, calibration_tokens=tokens, evaluate=False)
    compile_model(out, config, onnx_dir=onnx_dir)
    return out
