"""Lossy passes on tiny exports: INT4 weight QDQ, activation QDQ, KV QDQ with the kept prompt."""

import shutil

import ml_dtypes
import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest

from smoothrot.compiler.calibrate.statistics import calibrate_dir
from smoothrot.compiler.calibrate.store import StatisticsLookup
from smoothrot.compiler.config import CalibrationConfig
from smoothrot.compiler.modeldir.model_dir import save_model
from smoothrot.compiler.runtime.ort_runner import OrtDecoder
from smoothrot.core.hadamard import rotation_factors
from smoothrot.core.int4 import Grouping
from smoothrot.core.manifest import load_manifest
from smoothrot.core.pass_infra import PassPreconditionError
from smoothrot.core.qdq import QuantBits, dynamic_qdq_reference
from smoothrot.passes._qdq import dynamic_qdq
from smoothrot.passes.fold_norm import FoldNormGammaPass
from smoothrot.passes.model_map import build_model_map
from smoothrot.passes.quantize_activations import ActQuantConfig, ActQuantPass
from smoothrot.passes.quantize_kv import KV_PREFIX_INPUT, KVQuantConfig, KVQuantPass
from smoothrot.passes.quantize_weights import (
    Algorithm,
    GroupingMode,
    WeightQuantConfig,
    WeightQuantPass,
    quantize_layer,
)

IDS = np.random.default_rng(2).integers(0, 49152, size=(1, 20))


@pytest.fixture(scope="module")
def llama(tiny_export, tmp_path_factory):
    """(export dir, manifest, hessian lookup) of the tiny Llama."""
    src = tiny_export("llama")
    cal = tmp_path_factory.mktemp("cal-q") / "c"
    calibrate_dir(src, CalibrationConfig(128, 32, hessian=True), cal, progress=False)
    manifest = load_manifest(src)
    return src, manifest, StatisticsLookup(cal, manifest, "hessian")


def _save_and_run(model: ir.Model, src, tmp_path) -> OrtDecoder:
    dst = tmp_path / "m"
    shutil.copytree(src, dst)
    for f in ("model.onnx", "model.onnx.data"):
        (dst / f).unlink()
    save_model(model, dst)
    return OrtDecoder(dst)


def _snr_db(ref: np.ndarray, got: np.ndarray) -> float:
    return float(20 * np.log10(np.linalg.norm(ref) / np.linalg.norm(ref - got)))


def test_weight_pass_stores_the_reference_quantizer_output(llama, tmp_path):
    src, manifest, hessian = llama
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
    logits = _save_and_run(model, src, tmp_path).forward(IDS)[0]
    ref_logits = OrtDecoder(src).forward(IDS)[0]
    assert 10.0 < _snr_db(ref_logits, logits) < 80.0  # lossy, but close


def test_adadim_keeps_the_grouping_with_the_smaller_error(llama):
    src, manifest, hessian = llama
    model = ir.load(src / "model.onnx")
    p = WeightQuantPass(manifest.dims, hessian, WeightQuantConfig(GroupingMode.ADADIM, 32))
    for r in p(model).details["layers"]:
        assert set(r.errors) == {"per-oc", "per-ic"}
        assert r.errors[r.grouping] == min(r.errors.values())
        assert np.isfinite(r.snr_db) and r.snr_db > 5


def test_dynamic_qdq_in_ort_equals_the_reference():
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape(["B", "S", 48]))
    anchor = ir.node("Identity", [x])
    graph = ir.Graph([x], [], nodes=[anchor], opset_imports={"": 21})
    for bits in QuantBits:
        y = dynamic_qdq(graph, x, bits, 48, f"t{bits.value}", "test", anchor)
        graph.outputs.append(y)
    proto = ir.serde.serialize_model(ir.Model(graph, ir_version=10))
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    data = np.random.default_rng(3).standard_normal((2, 5, 48)).astype(np.float32) * 4
    data[0, 1] = 0.0  # an all-zero token must not divide by zero
    data[1, 2, 7] = 300.0  # an outlier flattens its own token only
    for bits, got in zip(QuantBits, sess.run(None, {"x": data}), strict=True):
        ref = dynamic_qdq_reference(data, bits)
        np.testing.assert_array_equal(got, ref)
        assert len(np.unique(ref[1, 0])) <= 2 * bits.qmax + 1
    np.testing.assert_array_equal(ref[0, 1], 0.0)


def test_activation_pass_structure_and_idempotence(llama, tmp_path):
    src, manifest, _ = llama
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
    logits = _save_and_run(model, src, tmp_path).forward(IDS)[0]
    assert _snr_db(OrtDecoder(src).forward(IDS)[0], logits) > 20.0  # INT8 per token: mild


def test_kv_pass_keeps_the_prompt_positions_and_quantizes_the_rest(llama, tmp_path):
    src, manifest, _ = llama
    model = ir.load(src / "model.onnx")
    assert KVQuantPass(manifest.dims, KVQuantConfig(QuantBits.INT4, keep_prefix=8))(model).modified
    assert not KVQuantPass(manifest.dims)(model).modified
    decoder = _save_and_run(model, src, tmp_path)
    fp_logits, fp_present = OrtDecoder(src).forward(IDS)
    logits, present = decoder.forward(IDS)
    key0, fp_key0 = present[0], fp_present[0]  # layer 0 key: computed before any quantization
    np.testing.assert_array_equal(key0[:, :, :8], fp_key0[:, :, :8])
    h = rotation_factors(manifest.dims.head_dim).dense.astype(np.float32)
    rotated = dynamic_qdq_reference(fp_key0[:, :, 8:] @ h, QuantBits.INT4) @ h.T
    np.testing.assert_allclose(key0[:, :, 8:], rotated, atol=1e-5)
    assert not np.allclose(key0[:, :, 8:], fp_key0[:, :, 8:], atol=1e-3)  # really quantized
    assert not np.allclose(logits, fp_logits, atol=1e-3)
    # P is a runtime input with the compiled default: a larger P keeps the whole prompt.
    feeds = {
        "input_ids": IDS,
        "attention_mask": np.ones_like(IDS),
        "position_ids": np.arange(IDS.shape[1])[None],
        KV_PREFIX_INPUT: np.array(IDS.shape[1], np.int64),
    }
    feeds.update(zip(manifest.past_names, decoder.empty_cache(), strict=True))
    kept = decoder.session.run(None, feeds)[0]
    np.testing.assert_allclose(kept, fp_logits, atol=1e-5)


def test_int4_initializer_is_packed_on_disk(llama, tmp_path):
    src, manifest, hessian = llama
    model = ir.load(src / "model.onnx")
    WeightQuantPass(manifest.dims, hessian, WeightQuantConfig(algorithm=Algorithm.RTN))(model)
    q = next(v for v in model.graph.initializers.values() if v.name.endswith(".int4"))
    assert q.const_value.tobytes().__len__() == np.prod(q.shape) // 2
    assert q.const_value.numpy().dtype == ml_dtypes.int4
