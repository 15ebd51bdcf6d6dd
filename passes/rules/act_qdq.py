"""The per-token INT8 activation QDQ a TensorRT ``w4a8_gemm`` plugin reads through.

:mod:`smoothrot.passes._qdq` writes, for ``x [..., C]``::

    scale = Max(Div(ReduceMax(Abs(x), [-1], keepdims=1), 127), 1e-12)
    y     = DequantizeLinear(QuantizeLinear(x, scale), scale)   # axis -1, block_size C, INT8

:class:`ActQdqPair` is the pair (configured with ``C``: the blocks are whole rows) and its check
matches the scale's own pattern, :class:`ActQdqScale`, from the scale's producer.
:func:`match_act_qdq` returns the ``MatchResult`` (``bindings["x"]``: the raw input) or why the
QDQ is not this form, in the words the plugin lowering reports.

A matcher, not a rewrite rule: nothing replaces the QDQ where it matches. The GEMM plugin reads
``x`` directly, and the QDQ nodes (often shared by q/k/v or gate/up) go once no MatMul reads them.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from smoothrot.passes._graph import constant_array, is_constant, scalar_constant
from smoothrot.passes.rules._apply import match_at

__all__ = ["PAIR_MISMATCH", "SCALE_MISMATCH", "ActQdqPair", "ActQdqScale", "match_act_qdq"]

PAIR_MISMATCH = "activation QDQ is not a QuantizeLinear/DequantizeLinear pair sharing one scale"
SCALE_MISMATCH = "activation scale is not max(absmax(x) / 127, 1e-12) over the last axis"
_TINY = float(np.float32(1e-12))


class ActQdqScale(pattern.PatternBase):
    """``Max(Div(ReduceMax(Abs(x), [-1], keepdims=1), 127), 1e-12)``."""

    def pattern(self, op, x, axes, qmax, tiny):
        absmax = op.ReduceMax(op.Abs(x), axes, _outputs=["absmax"])
        return op.Max(op.Div(absmax, qmax), tiny)

    def check(
        self, context, axes: ir.Value, qmax: ir.Value, tiny: ir.Value, absmax: ir.Value, **_
    ) -> pattern.MatchResult:
        result = pattern.MatchResult()
        reduce = absmax.producer()
        assert reduce is not None
        if (
            scalar_constant(qmax) != 127.0
            or scalar_constant(tiny) != _TINY
            or reduce.attributes.get_int("keepdims", 1) != 1
            or not is_constant(axes)
            or constant_array(axes).tolist() != [-1]
        ):
            return result.fail(SCALE_MISMATCH, reduce)
        return result


class ActQdqPair(pattern.PatternBase):
    """``DequantizeLinear(QuantizeLinear(x, s), s)``, per-token INT8 over rows of ``channels``,
    with ``s`` the :class:`ActQdqScale` of ``x``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels

    def pattern(self, op, x, scale):
        quantized = op.QuantizeLinear(x, scale, _outputs=["quantized"])
        return op.DequantizeLinear(quantized, scale, _outputs=["dequantized"])

    def check(
        self, context, x: ir.Value, scale: ir.Value, quantized: ir.Value, dequantized: ir.Value, **_
    ) -> pattern.MatchResult:
        result = pattern.MatchResult()
        q, dq = quantized.producer(), dequantized.producer()
        assert q is not None and dq is not None
        if q.attributes.get_int("output_dtype", 0) != ir.DataType.INT8.value:
            return result.fail(
                "activation QDQ is not INT8 (only per-token INT8 has a plugin, w4a8_gemm)", q
            )
        for node in (q, dq):
            if node.attributes.get_int("axis", 1) != -1:
                return result.fail("activation QDQ is not along the last axis", node)
            if node.attributes.get_int("block_size", 0) != self.channels:
                return result.fail(f"activation QDQ blocks are not whole rows of {self.channels}")
        producer = scale.producer()
        if (
            producer is None
            # a fresh pattern: a module-level one's matcher would keep the last graph alive
            or not (found := match_at(ActQdqScale(), context.model, producer, removable=False))
            or found.bindings["x"] is not x
        ):
            return result.fail(SCALE_MISMATCH, scale)
        return result


def match_act_qdq(model: ir.Model, dq: ir.Node, channels: int) -> pattern.MatchResult:
    """Whether ``dq`` ends the per-token INT8 QDQ of a ``channels``-wide activation."""
    return match_at(ActQdqPair(channels), model, dq, removable=False, mismatch=PAIR_MISMATCH)
