"""One-layer graphs for micro-benchmarks and tests: ``Y = X · B`` in fp32 or as the compiler
writes an INT4 layer, ``MatMul(X, DequantizeLinear(q, s))`` with ``quantize_rtn``'s weights."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx_ir as ir

from smoothrot.core.int4 import Grouping, QuantizedWeight, fit_group_size, quantize_rtn

__all__ = ["linear_layer_model", "linear_layer_weight", "quantized_layer_weight"]


def linear_layer_weight(k: int, n: int, seed: int = 0) -> np.ndarray:
    """The random fp32 ``B [k, n]`` (scaled by 1/√k) every layer graph of ``seed`` holds."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)


def linear_layer_model(
    k: int, n: int, grouping: Grouping | None, group: int, seed: int = 0
) -> ir.Model:
    """``x [m, k] → y [m, n]``: fp32 weights (``grouping`` None) or RTN INT4 QDQ with groups of
    ``group`` (fitted to the dimension it runs along)."""
    b = linear_layer_weight(k, n, seed)
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape(["m", k]))
    graph = ir.Graph([x], [], nodes=[], opset_imports={"": 21}, name="layer")
    if grouping is None:
        w = ir.Value(name="w", const_value=ir.tensor(b, name="w"))
        graph.register_initializer(w)
        weight = w
    else:
        qw = quantized_layer_weight(k, n, grouping, group, seed)
        q = ir.Value(name="q", const_value=ir.tensor(qw.q.astype(ml_dtypes.int4), name="q"))
        s = ir.Value(name="s", const_value=ir.tensor(qw.scale, name="s"))
        graph.register_initializer(q)
        graph.register_initializer(s)
        attrs = {"axis": grouping.axis, "block_size": qw.block}
        dq = ir.node("DequantizeLinear", [q, s], attributes=attrs, name="dq")
        graph.append(dq)
        weight = dq.outputs[0]
    mm = ir.node("MatMul", [x, weight], name="matmul")
    graph.append(mm)
    mm.outputs[0].name = "y"
    graph.outputs.append(mm.outputs[0])
    return ir.Model(graph, ir_version=10)


def quantized_layer_weight(
    k: int, n: int, grouping: Grouping, group: int, seed: int = 0
) -> QuantizedWeight:
    """The RTN INT4 weight :func:`linear_layer_model` writes for these arguments."""
    b = linear_layer_weight(k, n, seed)
    return quantize_rtn(b, grouping, fit_group_size((k, n)[grouping.axis], group))
