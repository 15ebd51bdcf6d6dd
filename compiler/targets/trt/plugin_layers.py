"""One-layer fp32 QDQ graphs, one per plugin pattern, as the compiler writes them.

``x [1, M, K]`` (``M`` symbolic) → ``y``, with exactly the subgraph each plugin replaces:

- ``w4a16_gemm``: ``MatMul(x, DequantizeLinear(q INT4, scale; axis, block_size))``;
- ``w4a8_gemm``: the same after the per-token INT8 QDQ of ``x`` (:func:`~smoothrot.passes._qdq.
  dynamic_qdq`, marked as activation quantization);
- ``kron_hadamard``: the online rotation's ``Reshape → MatMul(·, B) → MatMul(Aᵀ, ·) → Reshape``
  (:mod:`smoothrot.passes.online_rotation`'s form and marks; factors from
  :func:`~smoothrot.core.hadamard.rotation_factors`).

ONNX Runtime runs them; :class:`~smoothrot.passes.lower_trt_plugins.LowerToTrtPluginsPass` turns
them into one plugin node each (the doctor's engines and the tests use both forms).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx_ir as ir

from smoothrot.core.hadamard import rotation_factors
from smoothrot.core.int4 import Grouping, quantize_rtn
from smoothrot.core.qdq import QuantBits
from smoothrot.passes._graph import ACT_QUANT_MARK, ROTATION_MARK, new_initializer
from smoothrot.passes._qdq import dynamic_qdq
from smoothrot.plugins.trt_spec import PluginOp

__all__ = ["gemm_layer", "rotation_layer"]


def _graph(k: int) -> tuple[ir.Graph, ir.Value]:
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([1, "m", k]))
    return ir.Graph([x], [], nodes=[], opset_imports={"": 21}, name="layer"), x


def _finish(graph: ir.Graph, y: ir.Value) -> ir.Model:
    y.name = "y"
    graph.outputs.append(y)
    return ir.Model(graph, ir_version=10)


def gemm_layer(
    op: PluginOp, k: int, n: int, grouping: Grouping, group: int, seed: int = 0
) -> ir.Model:
    """``y = x · dequantize(q)`` (after the INT8 QDQ of ``x`` for ``w4a8_gemm``), RTN weights."""
    if op is PluginOp.KRON_HADAMARD:
        raise ValueError("gemm_layer builds GEMM layers; use rotation_layer")
    rng = np.random.default_rng(seed)
    b = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    qw = quantize_rtn(b, grouping, group)
    graph, x = _graph(k)
    q = new_initializer(graph, "q", qw.q.astype(ml_dtypes.int4))
    s = new_initializer(graph, "s", qw.scale)
    attrs = {"axis": grouping.axis, "block_size": group}
    dq = ir.node("DequantizeLinear", [q, s], attributes=attrs, name="dq")
    mm = ir.node("MatMul", [x, dq.outputs[0]], name="matmul")
    graph.extend([dq, mm])
    if op is PluginOp.W4A8_GEMM:
        y = dynamic_qdq(graph, x, QuantBits.INT8, k, "matmul.act", ACT_QUANT_MARK, mm)
        mm.replace_input_with(0, y)
    return _finish(graph, mm.outputs[0])


def rotation_layer(n: int, seed: int = 0) -> ir.Model:
    """``y = x · (A ⊗ B)`` as the online rotation's four nodes."""
    f = rotation_factors(n, seed)
    m, p = f.a.shape[0], f.b.shape[0]
    graph, x = _graph(n)
    split = new_initializer(graph, "rot.split", np.array([0, 0, m, p], np.int64))
    merge = new_initializer(graph, "rot.merge", np.array([0, 0, n], np.int64))
    b = new_initializer(graph, "rot.b", f.b.astype(np.float32))
    at = new_initializer(graph, "rot.at", np.ascontiguousarray(f.a.T, np.float32))
    r1 = ir.node("Reshape", [x, split], name="rot.reshape_in")
    r2 = ir.node("MatMul", [r1.outputs[0], b], name="rot.matmul_b")
    r3 = ir.node("MatMul", [at, r2.outputs[0]], name="rot.matmul_a")
    r4 = ir.node("Reshape", [r3.outputs[0], merge], name="rot.reshape_out")
    for node in (r1, r2, r3, r4):
        node.metadata_props[ROTATION_MARK] = "online"
    graph.extend([r1, r2, r3, r4])
    return _finish(graph, r4.outputs[0])
