"""TorchGraph on the real default model: the same logits as ONNX Runtime."""

from __future__ import annotations

import pytest

from smoothrot.compiler.tune.graph_blocks import decoder_blocks, head_nodes
from tests.helpers import check_torch_logits_match_ort, load_graph


@pytest.mark.slow
def test_the_default_model_runs_as_onnx_runtime_does(default_export):
    check_torch_logits_match_ort(default_export, 1, 32)
    model, manifest = load_graph(default_export)
    prologue, blocks = decoder_blocks(model, manifest.dims)
    assert len(blocks) == 30 and prologue
    assert len(head_nodes(model, manifest.dims)) > 0
