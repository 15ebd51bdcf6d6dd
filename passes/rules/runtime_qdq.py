"""A run-time-scaled ``QuantizeLinear → DequantizeLinear`` pair as the arithmetic it defines.

``DequantizeLinear(QuantizeLinear(x, s), s)`` with ``s`` computed at run time, no zero points and
an INT8 or INT4 ``output_dtype`` → ``Clip(Round(x / s), -qmax - 1, qmax) · s``: the pair's
definition (``Round`` rounds half to even, as QuantizeLinear does; the Clip is its saturation), so
the value is the same bit for bit. The four nodes are named ``<quantize>.div``, ``.round``,
``.clip``, ``.mul``, carry the QuantizeLinear's metadata and ``x``'s type; the clip bounds are the
shared initializers ``smoothrot.trt_qdq.<int8|int4>.<low|high>`` (reused where they exist).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from smoothrot.passes._graph import is_constant

__all__ = ["RANGES", "RuntimeScaledQdq"]

RANGES = {ir.DataType.INT8: (-128, 127), ir.DataType.INT4: (-8, 7)}


def _output_type(quantized: ir.Value) -> ir.DataType:
    quant = quantized.producer()
    assert quant is not None
    return ir.DataType(quant.attributes.get_int("output_dtype", 0))


def _bound(op, graph: ir.Graph | None, name: str, array: np.ndarray) -> ir.Value:
    """The shared initializer ``name`` of ``graph``, or a new one (the driver registers it)."""
    if graph is not None and name in graph.initializers:
        return graph.initializers[name]
    return op.initializer(ir.tensor(array, name=name))


class RuntimeScaledQdq(pattern.RewriteRuleClassBase):
    """``DequantizeLinear(QuantizeLinear(x, s), s)``, ``s`` not a constant → exact arithmetic."""

    def pattern(self, op, x, scale):
        quantized = op.QuantizeLinear(x, scale, _outputs=["quantized"])
        return op.DequantizeLinear(quantized, scale)

    def check(self, context, scale: ir.Value, quantized: ir.Value, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        if is_constant(scale):
            return result.fail("the scale is a constant (a QDQ TensorRT builds as it is)", scale)
        out_type = _output_type(quantized)
        if out_type not in RANGES:
            return result.fail(f"the QuantizeLinear writes {out_type.name}, not INT8 or INT4")
        return result

    def rewrite(self, op, x: ir.Value, scale: ir.Value, quantized: ir.Value, **_) -> ir.Value:
        quant = quantized.producer()
        assert quant is not None
        out_type = _output_type(quantized)
        dtype = x.dtype.numpy() if x.dtype is not None else np.float32
        tag = quant.name or "qdq"
        kind = out_type.name.lower()
        bounds = [
            _bound(op, x.graph, f"smoothrot.trt_qdq.{kind}.{side}", np.array(bound, dtype))
            for side, bound in zip(("low", "high"), RANGES[out_type], strict=True)
        ]
        div = op.Div(x, scale, _name=f"{tag}.div")
        rounded = op.Round(div, _name=f"{tag}.round")
        clipped = op.Clip(rounded, *bounds, _name=f"{tag}.clip")
        y = op.Mul(clipped, scale, _name=f"{tag}.mul")
        for value in (div, rounded, clipped, y):
            value.producer().metadata_props.update(quant.metadata_props)
            value.type = x.type
        return y
