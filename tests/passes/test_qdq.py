"""passes/_qdq.py: the dynamic QDQ subgraph in ONNX Runtime equals its numpy reference."""

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from smoothrot.core.qdq import QuantBits, dynamic_qdq_reference
from smoothrot.passes._qdq import dynamic_qdq


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
