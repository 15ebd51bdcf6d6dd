"""``Mul(x, Reciprocal(Sqrt(v)))`` → ``Div(x, Sqrt(v))``, the RMSNorm form ONNX Runtime fuses.

The Reciprocal goes (it must have no other reader); the Sqrt stays, so other readers of the RMS
keep it. The Div is named after the Mul (``<mul>.div``). ``norm_div_rules()`` covers both
operand orders of the Mul.
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import pattern

from smoothrot.passes._graph import producer_op

__all__ = ["NormDiv", "norm_div_rules"]


class NormDiv(pattern.RewriteRuleClassBase):
    """``Mul(x, Reciprocal(rms))`` with ``rms = Sqrt(v)`` → ``Div(x, rms)``."""

    def pattern(self, op, x, rms):
        inverse = op.Reciprocal(rms, _outputs=["inverse"])
        return op.Mul(x, inverse, _outputs=["product"])

    def check(self, context, rms: ir.Value, inverse: ir.Value, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        sqrt = producer_op(rms, "Sqrt")
        if sqrt is None or sqrt.domain != "":
            return result.fail("the Reciprocal does not read a Sqrt", rms)
        if len(inverse.uses()) != 1:  # Mul(r, r): the matcher sees no reader outside the match
            return result.fail("the Reciprocal has another reader", inverse)
        return result

    def rewrite(self, op, x: ir.Value, rms: ir.Value, product: ir.Value, **_) -> ir.Value:
        mul = product.producer()
        assert mul is not None
        return op.Div(x, rms, _name=f"{mul.name}.div")


def norm_div_rules() -> pattern.RewriteRuleSet:
    """The rule for ``Mul(x, r)`` and for ``Mul(r, x)``."""
    return pattern.RewriteRuleSet([NormDiv().rule()], commute=True)
