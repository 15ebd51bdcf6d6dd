"""The TensorRT-form passes: run-time QDQ as arithmetic (exact) and fp16 with fp32 islands."""

import shutil

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest

from smoothrot.compiler.modeldir.model_dir import save_model
from smoothrot.compiler.runtime.ort_runner import OrtDecoder
from smoothrot.core.manifest import load_manifest
from smoothrot.core.pass_infra import PassPreconditionError
from smoothrot.core.qdq import QuantBits, dynamic_qdq_reference
from smoothrot.passes._qdq import dynamic_qdq
from smoothrot.passes.model_map import ModelMapError
from smoothrot.passes.to_fp16 import FP16_MAX, Fp16Pass
from smoothrot.passes.trt_act_quant import TrtActivationQdqPass

IDS = np.array([[1, 504, 3287, 8925, 9, 253, 30, 2478, 253, 1329, 28, 3114]], np.int64)


def _qdq_model(bits: QuantBits, channels: int = 96) -> ir.Model:
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([5, channels]))
    out = ir.node("Identity", [x])
    graph = ir.Graph([x], [], nodes=[out], opset_imports={"": 21})
    out.replace_input_with(0, dynamic_qdq(graph, x, bits, channels, "t", "m", out))
    out.outputs[0].name, out.outputs[0].type = "y", x.type
    graph.outputs.append(out.outputs[0])
    return ir.Model(graph, ir_version=10)


def _run(model: ir.Model, x: np.ndarray) -> np.ndarray:
    proto = ir.to_proto(model).SerializeToString()
    return ort.InferenceSession(proto, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("bits", [QuantBits.INT8, QuantBits.INT4])
def test_runtime_scaled_qdq_becomes_exact_arithmetic(bits):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((5, 96)) * np.geomspace(0.01, 300, 96)).astype(np.float32)
    x[0] = 0.0  # the scale floor
    x[1, :4] = [0.5, 1.5, -2.5, 3.5]  # halves: round half to even in both forms
    model = _qdq_model(bits)
    want = _run(model, x)
    rewrite = TrtActivationQdqPass()
    result = rewrite(model)
    ops = [n.op_type for n in model.graph]
    assert result.details["rewritten"] == ["t.quantize"] and "QuantizeLinear" not in ops
    again = rewrite(model)  # idempotent: nothing left to rewrite
    assert not again.modified and again.details["rewritten"] == []
    assert {"Div", "Round", "Clip", "Mul"} <= set(ops)
    np.testing.assert_array_equal(_run(model, x), want)
    np.testing.assert_array_equal(want, dynamic_qdq_reference(x, bits))


def test_runtime_scaled_quantize_without_its_pair_is_refused():
    model = _qdq_model(QuantBits.INT8)
    quant = next(n for n in model.graph if n.op_type == "QuantizeLinear")
    extra = ir.node("Cast", [quant.outputs[0]], attributes={"to": 1})
    model.graph.append(extra)  # a second reader of the integer tensor
    with pytest.raises(ValueError, match="t.quantize.*not a symmetric"):
        TrtActivationQdqPass()(model)


def _save(model: ir.Model, src, dst, dtype: str):
    shutil.copytree(src, dst)
    for f in ("model.onnx", "model.onnx.data"):
        (dst / f).unlink()
    save_model(model, dst)
    text = (dst / "smoothrot.json").read_text().replace('"dtype": "fp32"', f'"dtype": "{dtype}"')
    (dst / "smoothrot.json").write_text(text)
    return dst


def test_fp16_keeps_norm_statistics_and_rotary_in_fp32(tiny_export, tmp_path):
    src = tiny_export("llama")
    model = ir.load(src / "model.onnx")
    half = Fp16Pass(load_manifest(src).dims)
    details = half(model).details
    graph = model.graph
    assert details["island_nodes"] >= 5 * (2 * 2 + 1) + 3  # 5 nodes per norm + the rotary path
    assert details["saturated"] >= 1  # the attention mask's finfo(float32).min
    with pytest.raises(PassPreconditionError, match="to_fp16 needs a float32 graph"):
        half(model)  # its own output is fp16: refused, not converted twice
    for pow_ in (n for n in graph if n.op_type == "Pow"):
        cast = pow_.inputs[0].producer()
        assert cast.op_type == "Cast" and cast.attributes.get_int("to") == 1
    for node in (n for n in graph if n.op_type in ("Cos", "Sin")):
        assert node.inputs[0].dtype == ir.DataType.FLOAT
        (use,) = node.outputs[0].uses()
        assert use.node.op_type == "Cast" and use.node.attributes.get_int("to") == 10
    dtypes = {v.name: v.dtype for v in (*graph.inputs, *graph.outputs)}
    assert dtypes["past.0.key"] == dtypes["present.1.value"] == ir.DataType.FLOAT16
    assert dtypes["logits"] == ir.DataType.FLOAT
    floats = [v for v in graph.initializers.values() if v.dtype == ir.DataType.FLOAT]
    assert sorted(v.const_value.size for v in floats) == [1, 1, 8]  # 2, ε and inv_freq
    big = [v for v in graph.initializers.values() if v.dtype == ir.DataType.FLOAT16]
    assert max(np.abs(v.const_value.numpy()).max() for v in big) <= FP16_MAX
    ref, _ = OrtDecoder(src).forward(IDS)
    got, _ = OrtDecoder(_save(model, src, tmp_path / "fp16", "fp16")).forward(IDS)
    cos = (ref * got).sum(-1) / np.linalg.norm(ref, axis=-1) / np.linalg.norm(got, axis=-1)
    assert cos.min() > 0.9999 and (ref.argmax(-1) == got.argmax(-1)).all()


def test_fp16_refuses_a_graph_it_does_not_recognize(tiny_export):
    src = tiny_export("llama")
    model = ir.load(src / "model.onnx")
    dims = load_manifest(src).dims
    with pytest.raises(ModelMapError, match="found 5 RMSNorms, expected 7"):
        Fp16Pass(type(dims)(**{**dims.__dict__, "layers": 3}))(model)
