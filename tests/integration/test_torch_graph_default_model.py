"""TorchGraph on the real default model: the same logits as ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
import torch

from smoothrot.compiler.runtime.ort_runner import OrtDecoder
from smoothrot.compiler.tune.graph_blocks import decoder_blocks, head_nodes
from smoothrot.compiler.tune.torch_graph import TorchGraph, torch_feeds
from smoothrot.core.manifest import Manifest, load_manifest


def _load(directory) -> tuple[ir.Model, Manifest]:
    manifest = load_manifest(directory)
    return ir.load(str(directory / manifest.model_file)), manifest


def _ids(manifest: Manifest, batch: int, seq: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, manifest.dims.vocab, (batch, seq))


def _torch_logits(directory, ids: np.ndarray) -> np.ndarray:
    model, manifest = _load(directory)
    with torch.no_grad():
        out = TorchGraph(model).run(torch_feeds(manifest, ids), keep=["logits"])
    return out["logits"].numpy()


def _check_logits_match_ort(directory, batch: int, seq: int) -> float:
    manifest = load_manifest(directory)
    ids = _ids(manifest, batch, seq)
    ref, _ = OrtDecoder(directory, optimize=False).forward(ids)
    ours = _torch_logits(directory, ids)
    error = float(np.abs(ours - ref).max())
    assert error <= 1e-4 * np.abs(ref).max(), error
    return error


@pytest.mark.slow
def test_the_default_model_runs_as_onnx_runtime_does(default_export):
    _check_logits_match_ort(default_export, 1, 32)
    model, manifest = _load(default_export)
    prologue, blocks = decoder_blocks(model, manifest.dims)
    assert len(blocks) == 30 and prologue
    assert len(head_nodes(model, manifest.dims)) > 0
