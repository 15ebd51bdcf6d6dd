"""ActQuantPass: per-token activation QDQ in front of the Linears, once."""

import numpy as np
import onnx_ir as ir

from smoothrot.compiler.runtime.ort_runner import OrtDecoder
from smoothrot.core.qdq import QuantBits
from smoothrot.passes.model_map import build_model_map
from smoothrot.passes.quantize_activations import ActQuantConfig, ActQuantPass
from tests.helpers import save_copy

IDS = np.random.default_rng(2).integers(0, 49152, size=(1, 20))


def _snr_db(ref: np.ndarray, got: np.ndarray) -> float:
    return float(20 * np.log10(np.linalg.norm(ref) / np.linalg.norm(ref - got)))


def test_activation_pass_structure_and_idempotence(tiny_hessian, tmp_path):
    src, manifest, _ = tiny_hessian
    model = ir.load(src / "model.onnx")
    p = ActQuantPass(manifest.dims, ActQuantConfig(QuantBits.INT8))
    assert p(model).modified
    quant = [n for n in model.graph if n.op_type == "QuantizeLinear"]
    assert len(quant) == 4 * manifest.dims.layers  # qkv, o, gate/up, down; lm_head not asked
    mm = build_model_map(model, manifest.dims).require()  # sees through the QDQ
    for layer in mm.layers:
        assert layer.q.input is layer.k.input is layer.v.input
        assert layer.q.input.producer().op_type == "DequantizeLinear"
    assert not p(model).modified
    logits = OrtDecoder(save_copy(model, src, tmp_path / "m")).forward(IDS)[0]
    assert _snr_db(OrtDecoder(src).forward(IDS)[0], logits) > 20.0  # INT8 per token: mild
