"""TrtActivationQdqPass: run-time-scaled QDQ as Div/Round/Clip/Mul, bit-exact in ONNX Runtime."""

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest

from smoothrot.core.qdq import QuantBits, dynamic_qdq_reference
from smoothrot.passes._qdq import dynamic_qdq
from smoothrot.passes.trt_act_quant import TrtActivationQdqPass


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
