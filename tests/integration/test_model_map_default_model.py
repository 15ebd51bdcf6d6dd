"""The model map of the real default model."""

import numpy as np
import onnx_ir as ir

from smoothrot.core.manifest import load_manifest
from smoothrot.passes.model_map import build_model_map


def test_default_model_map(default_export):
    manifest = load_manifest(default_export)
    mm = build_model_map(ir.load(default_export / "model.onnx"), manifest.dims).require()
    assert len(mm.layers) == 30
    layer = mm.layers[29]
    assert np.asarray(layer.down.weight.shape.dims).tolist() == [1536, 576]
    assert layer.k.weight.shape.dims == (576, 192)  # 3 KV heads x 64
