"""The kernels' numpy references ≡ the QDQ subgraphs the compiler emits, run in ONNX Runtime."""

import ml_dtypes
import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest

from smoothrot.core.hadamard import rotation_factors
from smoothrot.core.int4 import Grouping, QuantizedWeight, quantize_rtn
from smoothrot.core.qdq import QuantBits, dynamic_qdq_reference
from smoothrot.passes._qdq import dynamic_qdq
from smoothrot.plugins.packing import pack_int4, unpack_int4
from smoothrot.plugins.reference import (
    check_int4_operands,
    kronecker_hadamard,
    w4a8_matmul,
    w4a16_matmul,
)

RNG = np.random.default_rng(0)
K, N, GROUP = 128, 96, 32


def _constant(name: str, array: np.ndarray) -> ir.Value:
    return ir.Value(name=name, const_value=ir.tensor(array, name=name))


def _run(graph: ir.Graph, x: np.ndarray) -> list[np.ndarray]:
    proto = ir.serde.serialize_model(ir.Model(graph, ir_version=10))
    options = ort.SessionOptions()
    # The QDQ semantics themselves: ORT's optimizer would fuse DQ(axis 0) + MatMul into
    # MatMulNBits, which by default quantizes the activations to int8 (accuracy level 4).
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(
        proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return sess.run(None, {"x": x})


def _qdq_linear(q: np.ndarray, scale: np.ndarray, grouping: Grouping, act_int8: bool):
    """``MatMul([int8 QDQ](x), DequantizeLinear(q, scale))`` as the compiler emits it."""
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape(["M", K]))
    w, s = _constant("w", q.astype(ml_dtypes.int4)), _constant("s", scale)
    attrs = {"axis": grouping.axis, "block_size": GROUP}
    dq = ir.node("DequantizeLinear", [w, s], attributes=attrs)
    matmul = ir.node("MatMul", [x, dq.outputs[0]])
    graph = ir.Graph([x], [], nodes=[dq, matmul], initializers=[w, s], opset_imports={"": 21})
    if act_int8:
        xq = dynamic_qdq(graph, x, QuantBits.INT8, K, "act", "test", matmul)
        matmul.replace_input_with(0, xq)
        graph.outputs.append(xq)
    y = matmul.outputs[0]
    y.name, y.type = "y", ir.TensorType(ir.DataType.FLOAT)
    graph.outputs.insert(0, y)
    return graph


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _weights(grouping: Grouping):
    b = RNG.standard_normal((K, N)).astype(np.float32) * np.exp(RNG.standard_normal((K, 1)))
    return quantize_rtn(b.astype(np.float32), grouping, GROUP)


def test_packing_is_the_onnx_int4_byte_layout_and_round_trips():
    q = RNG.integers(-8, 8, size=(6, 10)).astype(np.int8)
    packed = pack_int4(q)
    assert packed.dtype == np.int8 and packed.shape == (6, 5)
    onnx_bytes = ir.tensor(q.astype(ml_dtypes.int4)).tobytes()
    assert packed.tobytes() == onnx_bytes
    assert (packed[0, 0] & 0xF) == (q[0, 0] & 0xF)  # column 0 in the low nibble
    np.testing.assert_array_equal(unpack_int4(packed), q)
    with pytest.raises(ValueError, match="even"):
        pack_int4(q[:, :9])
    with pytest.raises(ValueError, match=r"\[-8, 7\]"):
        pack_int4(q + 8)


@pytest.mark.parametrize("grouping", list(Grouping))
def test_w4a16_reference_equals_ort(grouping):
    qw = _weights(grouping)
    x = RNG.standard_normal((5, K)).astype(np.float32)
    (got,) = _run(_qdq_linear(qw.q, qw.scale, grouping, act_int8=False), x)
    ref = w4a16_matmul(x, qw.q, qw.scale, grouping, GROUP)
    assert _rel(ref, got) < 1e-6
    # The tolerance bites: the scales of the neighbouring groups are far off.
    rolled = QuantizedWeight(qw.q, np.roll(qw.scale, 1, grouping.axis), grouping, GROUP)
    assert _rel(x @ rolled.dequantize(), got) > 0.05


@pytest.mark.parametrize("grouping", list(Grouping))
def test_w4a8_reference_equals_ort(grouping):
    qw = _weights(grouping)
    x = (RNG.standard_normal((4, K)) * 3).astype(np.float32)
    x[1, 5] = 60.0  # an outlier token
    x[2] = 0.0  # an all-zero token
    x[3, :8] = [127.0, 0.5, 1.5, 2.5, -0.5, -2.5, 3.5, -126.5]  # scale 1: exact ties
    got, got_act = _run(_qdq_linear(qw.q, qw.scale, grouping, act_int8=True), x)
    np.testing.assert_array_equal(got_act, dynamic_qdq_reference(x, QuantBits.INT8))
    np.testing.assert_array_equal(got_act[3, :8], [127, 0, 2, 2, 0, -2, 4, -126])  # half-even
    ref = w4a8_matmul(x, qw.q, qw.scale, grouping, GROUP)
    assert _rel(ref, got) < 1e-6
    assert _rel(w4a16_matmul(x, qw.q, qw.scale, grouping, GROUP), got) > 1e-4  # QDQ matters


@pytest.mark.parametrize("n", [96, 576, 4096])
def test_kronecker_hadamard_equals_the_online_rotation_subgraph(n):
    f = rotation_factors(n)
    m, p = f.a.shape[0], f.b.shape[0]
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([2, 3, n]))
    split = _constant("split", np.array([0, 0, m, p], np.int64))
    merge = _constant("merge", np.array([0, 0, n], np.int64))
    b = _constant("b", f.b.astype(np.float32))
    at = _constant("at", np.ascontiguousarray(f.a.T).astype(np.float32))
    r1 = ir.node("Reshape", [x, split])
    r2 = ir.node("MatMul", [r1.outputs[0], b])
    r3 = ir.node("MatMul", [at, r2.outputs[0]])
    r4 = ir.node("Reshape", [r3.outputs[0], merge])
    y = r4.outputs[0]
    y.name, y.type = "y", ir.TensorType(ir.DataType.FLOAT)
    graph = ir.Graph(
        [x], [y], nodes=[r1, r2, r3, r4], initializers=[split, merge, b, at], opset_imports={"": 21}
    )
    data = RNG.standard_normal((2, 3, n)).astype(np.float32)
    (got,) = _run(graph, data)
    ref = kronecker_hadamard(data, f.a, f.b)
    assert _rel(ref, got) < 1e-6
    assert _rel(ref, data @ f.dense) < 1e-5  # it is x · (A ⊗ B)
    np.testing.assert_allclose(np.linalg.norm(ref, axis=-1), np.linalg.norm(data, axis=-1), 1e-5)


def test_bad_operands_are_value_errors():
    with pytest.raises(ValueError, match="does not divide"):
        check_int4_operands(100, 64, (3, 64), Grouping.PER_OC, 32)
    with pytest.raises(ValueError, match="must be"):
        check_int4_operands(128, 64, (128, 2), Grouping.PER_OC, 32)
    with pytest.raises(ValueError, match="do not multiply"):
        w4a16_matmul(np.zeros((1, 64), np.float32), np.zeros((128, 8), np.int8),
                      np.ones((4, 8), np.float32), Grouping.PER_OC, 32)  # fmt: skip
    with pytest.raises(ValueError, match="square"):
        kronecker_hadamard(np.zeros((1, 8)), np.eye(2), np.ones((4, 2)))
