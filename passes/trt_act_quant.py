"""Rewrite runtime-scaled QDQ pairs into the arithmetic TensorRT can build.

TensorRT's QuantizeLinear needs a build-time constant scale; the per-token activation QDQ and
the KV-cache QDQ of our graphs (:mod:`smoothrot.passes._qdq`) compute their scale at run time,
and TensorRT-RTX's builder fails on them (Myelin ``CHECK(is_constant())``). This pass rewrites
each ``QuantizeLinear(x, s) → DequantizeLinear(q, s)`` pair whose scale is not a constant into::

    y = Clip(Round(x / s), -qmax - 1, qmax) · s

which is the pair's definition (ONNX ``Round`` rounds half to even, as QuantizeLinear does; the
clip is QuantizeLinear's saturation), so the graph keeps its meaning exactly; the integer tensor
simply never materializes. Integer-GEMM speed for these layers is the plugin path's job
(``plugins/w4a8_gemm.py``); the plugin-free TensorRT-RTX engine runs them as fp16 GEMMs.

Pairs with constant scales (INT4 weights) are TensorRT's native form and stay. A runtime-scaled
QuantizeLinear not followed by its DequantizeLinear alone is reported by name and refused.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from smoothrot.core.pass_infra import PassReport
from smoothrot.passes._graph import is_constant, new_initializer

__all__ = ["TrtActivationQdqPass"]

_RANGES = {ir.DataType.INT8: (-128, 127), ir.DataType.INT4: (-8, 7)}


class TrtActivationQdqPass(ir.passes.InPlacePass):
    """``details["rewritten"]``: the name of each QuantizeLinear rewritten."""

    name = "trt_activation_qdq"

    def call(self, model: ir.Model) -> PassReport:
        graph, rewritten = model.graph, []
        for quant in [n for n in graph if n.op_type == "QuantizeLinear" and n.domain == ""]:
            x, scale = quant.inputs[0], quant.inputs[1]
            if scale is None or is_constant(scale):
                continue
            uses = list(quant.outputs[0].uses())
            dequant = uses[0].node if len(uses) == 1 else None
            out_type = ir.DataType(quant.attributes.get_int("output_dtype", 0))
            if (
                x is None
                or dequant is None
                or dequant.op_type != "DequantizeLinear"
                or dequant.inputs[1] is not scale
                or len(dequant.inputs) > 2
                or len(quant.inputs) > 2
                or out_type not in _RANGES
            ):
                raise ValueError(
                    f"QuantizeLinear {quant.name!r} has a run-time scale but is not a symmetric "
                    "INT8/INT4 QDQ pair; TensorRT cannot build it"
                )
            rewritten.append(_rewrite(graph, quant, dequant, x, scale, out_type))
        return PassReport(model, bool(rewritten), {"rewritten": rewritten})


def _rewrite(
    graph: ir.Graph,
    quant: ir.Node,
    dequant: ir.Node,
    x: ir.Value,
    scale: ir.Value,
    out_type: ir.DataType,
) -> str:
    low, high = _RANGES[out_type]
    dtype = x.dtype.numpy() if x.dtype is not None else np.float32
    tag = quant.name or "qdq"
    bounds = []
    for side, bound in (("low", low), ("high", high)):
        name = f"smoothrot.trt_qdq.{out_type.name.lower()}.{side}"
        if name not in graph.initializers:
            new_initializer(graph, name, np.array(bound, dtype))
        bounds.append(graph.initializers[name])
    div = ir.node("Div", [x, scale], name=f"{tag}.div")
    rnd = ir.node("Round", [div.outputs[0]], name=f"{tag}.round")
    clip = ir.node("Clip", [rnd.outputs[0], *bounds], name=f"{tag}.clip")
    mul = ir.node("Mul", [clip.outputs[0], scale], name=f"{tag}.mul")
    nodes = [div, rnd, clip, mul]
    for node in nodes:
        node.metadata_props.update(quant.metadata_props)
        node.outputs[0].type = x.type
    ir.convenience.replace_nodes_and_values(
        graph, quant, [quant, dequant], nodes, [dequant.outputs[0]], [mul.outputs[0]]
    )
    return tag
