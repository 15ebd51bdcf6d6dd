"""Dynamic symmetric quantize-dequantize over the last axis, as standard ONNX (opset 21) nodes.

Semantics (what ONNX Runtime computes here, and what TensorRT plugins must reproduce), for
``x [..., C]`` and ``qmax = 2^(bits−1) − 1``::

    scale = max(max_c |x[..., c]| / qmax, 1e-12)          # one scale per row (token / head·token)
    q     = saturate(round_half_to_even(x / scale))        # int8 in [-128, 127] or int4 in [-8, 7]
    y     = q · scale

as ``Abs → ReduceMax(axes=[-1], keepdims) → Div(qmax) → Max(1e-12) → QuantizeLinear(axis=-1,
block_size=C, output_dtype) → DequantizeLinear(axis=-1, block_size=C)`` — blocked QDQ whose one
block spans the row, with no zero-point (symmetric). Since ``|x / scale| ≤ qmax``, saturation
never clips: the grid is symmetric ``[-qmax, qmax]``.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from smoothrot.core.qdq import TINY_SCALE, QuantBits
from smoothrot.passes._graph import new_initializer

__all__ = ["dynamic_qdq"]


def _shared_constant(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    if name in graph.initializers:
        return graph.initializers[name]
    return new_initializer(graph, name, array)


def dynamic_qdq(
    graph: ir.Graph,
    x: ir.Value,
    bits: QuantBits,
    channels: int,
    tag: str,
    mark: str,
    before: ir.Node,
) -> ir.Value:
    """Insert the QDQ of ``x`` (last axis of size ``channels``) before ``before``; return ``y``.
    Every node carries the metadata ``mark = int8|int4``."""
    axes = _shared_constant(graph, "smoothrot.qdq.axes", np.array([-1], np.int64))
    qmax = _shared_constant(graph, f"smoothrot.qdq.qmax{bits.value}", np.float32(bits.qmax))
    tiny = _shared_constant(graph, "smoothrot.qdq.tiny", TINY_SCALE)
    absx = ir.node("Abs", [x], name=f"{tag}.abs")
    amax = ir.node("ReduceMax", [absx.outputs[0], axes], attributes={"keepdims": 1})
    div = ir.node("Div", [amax.outputs[0], qmax], name=f"{tag}.div")
    scale = ir.node("Max", [div.outputs[0], tiny], name=f"{tag}.scale")
    block = {"axis": -1, "block_size": channels}
    quant = ir.node(
        "QuantizeLinear",
        [x, scale.outputs[0]],
        attributes={**block, "output_dtype": bits.onnx_type.value},
        name=f"{tag}.quantize",
    )
    dequant = ir.node(
        "DequantizeLinear", [quant.outputs[0], scale.outputs[0]], attributes=block, name=f"{tag}.dq"
    )
    amax.name = f"{tag}.absmax"
    nodes = [absx, amax, div, scale, quant, dequant]
    for node in nodes:
        node.metadata_props[mark] = f"int{bits.value}"
    graph.insert_before(before, nodes)
    y = dequant.outputs[0]
    y.name, y.type, y.shape = f"{tag}.qdq", x.type, x.shape
    return y
