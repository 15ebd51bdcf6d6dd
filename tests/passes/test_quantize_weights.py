"""WeightQuantPass: INT4 weights equal the reference quantizer; AdaDim's choice; packed on disk."""

import ml_dtypes
import numpy as np
import onnx_ir as ir
import pytest

from smoothrot.compiler.runtime.ort_runner import OrtDecoder
from smoothrot.core.int4 import Grouping
from smoothrot.core.pass_infra import PassPreconditionError
from smoothrot.passes.fold_norm import FoldNormGammaPass
from smoothrot.passes.model_map import build_model_map
from smoothrot.passes.quantize_weights import (
    Algorithm,
    GroupingMode,
    WeightQuantConfig,
    WeightQuantPass,
    quantize_layer,
)
from tests.helpers import save_copy

IDS = np.random.default_rng(2).integers(0, 49152, size=(1, 20))


def _snr_db(ref: np.ndarray, got: np.ndarray) -> float:
    return float(20 * np.log10(np.linalg.norm(ref) / np.linalg.norm(ref - got)))


def test_weight_pass_stores_the_reference_quantizer_output(tiny_hessian, tmp_path):
    src, manifest, hessian = tiny_hessian
    model = ir.load(src / "model.onnx")
    config = WeightQuantConfig(GroupingMode.PER_IC, 32, Algorithm.GPTQ)
    mm = build_model_map(model, manifest.dims).require()
    originals = {lin.name: lin.weight.const_value.numpy().copy() for lin in mm.linears()}
    p = WeightQuantPass(manifest.dims, hessian, config)
    result = p(model)
    assert result.modified
    mm = build_model_map(model, manifest.dims).require()  # still recognized after quantization
    assert mm.lm_head.dequantize is None  # lm_head kept in fp32 by default
    layers = [lin for layer in mm.layers for lin in layer.linears()]
    assert len(layers) == len(result.details["layers"]) == 14
    for lin in layers:
        dq = lin.dequantize
        assert dq is not None and dq.attributes.get_int("axis") == 1
        q_init, scale_init = dq.inputs
        assert q_init.const_value.dtype == ir.DataType.INT4
        ref, _ = quantize_layer(originals[lin.name], hessian(lin), Grouping.PER_IC, config)
        np.testing.assert_array_equal(q_init.const_value.numpy().astype(np.int8), ref.q)
        np.testing.assert_array_equal(scale_init.const_value.numpy(), ref.scale)
        assert dq.attributes.get_int("block_size") == ref.block
    again = p(model)  # idempotent: every layer is INT4 already; nothing carried over
    assert not again.modified and again.details["layers"] == []
    with pytest.raises(PassPreconditionError, match="fold_norm_gamma needs float weights"):
        FoldNormGammaPass(manifest.dims)(model)
    logits = OrtDecoder(save_copy(model, src, tmp_path / "m")).forward(IDS)[0]
    ref_logits = OrtDecoder(src).forward(IDS)[0]
    assert 10.0 < _snr_db(ref_logits, logits) < 80.0  # lossy, but close


def test_adadim_keeps_the_grouping_with_the_smaller_error(tiny_hessian):
    src, manifest, hessian = tiny_hessian
    model = ir.load(src / "model.onnx")
    p = WeightQuantPass(manifest.dims, hessian, WeightQuantConfig(GroupingMode.ADADIM, 32))
    for r in p(model).details["layers"]:
        assert set(r.errors) == set(Grouping)
        assert r.errors[r.grouping] == min(r.errors.values())
        assert np.isfinite(r.snr_db) and r.snr_db > 5


def test_int4_initializer_is_packed_on_disk(tiny_hessian, tmp_path):
    src, manifest, hessian = tiny_hessian
    model = ir.load(src / "model.onnx")
    WeightQuantPass(manifest.dims, hessian, WeightQuantConfig(algorithm=Algorithm.RTN))(model)
    q = next(v for v in model.graph.initializers.values() if v.name.endswith(".int4"))
    assert q.const_value.tobytes().__len__() == np.prod(q.shape) // 2
    assert q.const_value.numpy().dtype == ml_dtypes.int4
