"""``MatMul(x, DequantizeLinear(q, scale))`` with a blocked, symmetric INT4 constant weight.

What ``WeightQuantPass`` writes and both INT4 lowerings read: ``q`` an INT4 constant ``[K, N]``,
``scale`` a constant, no zero point, ``axis`` 0 or 1 with a ``block_size`` that blocks ``q`` and
matches ``scale``'s shape. The candidates are the MatMuls :func:`reads_int4_weight` picks (their
``B`` is the DequantizeLinear of an INT4 constant); :func:`match_int4_matmul` says whether one is
this pattern (``MatchResult`` bindings ``x``, ``q``, ``scale``, ``weight``) or why not, and
:meth:`Int4MatMul.of` reads the matched weight.

A matcher, not a rewrite rule: the lowerings repack the weight into their kernels' layouts, may
emit many nodes per layer (a Mul and a MatMulNBits per column group), mark them, and fall back or
skip with the kernel's own reason; the DequantizeLinear may have other readers, so it is not
part of what a match replaces.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from smoothrot.passes._graph import is_constant, producer_op, read_constant
from smoothrot.passes.rules._apply import match_at

__all__ = [
    "Int4MatMul",
    "Int4MatMulPattern",
    "int4_matmuls",
    "match_int4_matmul",
    "reads_int4_weight",
]


class Int4MatMulPattern(pattern.PatternBase):
    """``MatMul(x, DequantizeLinear(q, scale[, zero point]))`` and the checks of our INT4 form."""

    def pattern(self, op, x, q, scale):
        weight = op.DequantizeLinear(q, scale, _allow_other_inputs=True, _outputs=["weight"])
        return op.MatMul(x, weight)

    def check(
        self, context, q: ir.Value, scale: ir.Value, weight: ir.Value, **_
    ) -> pattern.MatchResult:
        result = pattern.MatchResult()
        dq = weight.producer()
        assert dq is not None and q.const_value is not None
        if len(dq.inputs) > 2 and dq.inputs[2] is not None:
            return result.fail("has a zero point", dq)
        if not is_constant(scale) or q.const_value.shape.rank() != 2:
            return result.fail("scale is not a constant, or the weight is not 2-D", dq)
        shape = tuple(q.const_value.shape)
        axis, group = _blocking(dq)
        if axis not in (0, 1) or group <= 0 or shape[axis] % group:
            blocking = f"DequantizeLinear axis {axis}, block_size {group}"
            return result.fail(f"{blocking} is not a blocked INT4 weight", dq)
        k, n = shape
        expected = (k // group, n) if axis == 0 else (k, n // group)
        scale_shape = tuple(scale.const_value.shape)  # type: ignore[union-attr]
        if scale_shape != expected:
            reason = f"scale {list(scale_shape)} does not block weight {list(shape)} on axis {axis}"
            return result.fail(reason, dq)
        return result


_PATTERN = Int4MatMulPattern()


def _blocking(dq: ir.Node) -> tuple[int, int]:
    axis = dq.attributes.get_int("axis", 1)
    return (axis + 2 if axis < 0 else axis), dq.attributes.get_int("block_size", 0)


def reads_int4_weight(node: ir.Node) -> bool:
    """``node`` is a MatMul whose ``B`` is the DequantizeLinear of an INT4 constant."""
    if node.op_type != "MatMul" or node.domain != "" or len(node.inputs) < 2:
        return False
    dq = producer_op(node.inputs[1], "DequantizeLinear")
    q = dq.inputs[0] if dq is not None and dq.inputs else None
    return is_constant(q) and q.const_value.dtype == ir.DataType.INT4  # type: ignore[union-attr]


def match_int4_matmul(model: ir.Model, matmul: ir.Node) -> pattern.MatchResult:
    """Whether ``matmul`` (one :func:`reads_int4_weight` picked) is our INT4 form; a failed
    result's ``reason`` names the problem (a zero point, a run-time scale, not 2-D, not blocked
    on axis 0 or 1)."""
    return match_at(_PATTERN, model, matmul, removable=False)


@dataclass
class Int4MatMul:
    """``MatMul(X, DequantizeLinear(q, scale))`` with a blocked, symmetric INT4 constant weight."""

    matmul: ir.Node
    dq: ir.Node
    q: np.ndarray  # int8 [K, N], values in [-8, 7]
    scale: np.ndarray  # float32, [K/g, N] (axis 0) or [K, N/g] (axis 1)
    axis: int
    group: int

    @classmethod
    def of(cls, match: pattern.MatchResult) -> Int4MatMul:
        """The weight of a successful :func:`match_int4_matmul`."""
        if not match:
            raise ValueError(f"not an INT4 MatMul: {match.reason}")
        matmul, dq = match.outputs[0].producer(), match.bindings["weight"].producer()
        assert matmul is not None and dq is not None
        axis, group = _blocking(dq)
        q = read_constant(match.bindings["q"], np.int8)
        scale = read_constant(match.bindings["scale"], np.float32)
        return cls(matmul, dq, q, scale, axis, group)

    @property
    def name(self) -> str:
        """The layer's name in reports: the MatMul's, else its weight's."""
        return self.matmul.name or (self.dq.outputs[0].name or "linear")


def int4_matmuls(model: ir.Model, skipped: dict[str, str]) -> Iterator[Int4MatMul]:
    """Every MatMul of our INT4 form, in graph order, read one at a time as the caller takes
    it (a lowering that rewrites each before taking the next holds one weight, not the
    model's); each other MatMul that reads an INT4 weight is entered in ``skipped`` by name
    with the reason as it is reached."""
    for node in [n for n in model.graph if reads_int4_weight(n)]:
        match = match_int4_matmul(model, node)
        if match:
            yield Int4MatMul.of(match)
        else:
            skipped[node.name or "?"] = match.reason
