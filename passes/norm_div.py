"""Rewrite the exporter's RMSNorm reciprocal into a division, the form ONNX Runtime fuses.

The exported RMSNorm computes ``x · Reciprocal(Sqrt(mean(x²) + ε))``; ONNX Runtime's
``SimplifiedLayerNormalization`` fusion only recognizes ``x / Sqrt(mean(x²) + ε)``. This pass
rewrites ``Mul(x, Reciprocal(Sqrt(v)))`` into ``Div(x, Sqrt(v))`` where the Reciprocal has no
other reader (the rule :mod:`smoothrot.passes.rules.norm_div`): the same value up to one
rounding, and on the default model about 360 fewer nodes per decoded token once ORT fuses the
norms (see README, "Speed"). Used by the ORT lowering.
"""

from __future__ import annotations

import onnx_ir as ir

from smoothrot.core.pass_infra import PassReport
from smoothrot.passes.rules._apply import rewrite_at
from smoothrot.passes.rules.norm_div import norm_div_rules

__all__ = ["NormDivPass"]


class NormDivPass(ir.passes.InPlacePass):
    """``details["rewritten"]``: the number of norms rewritten."""

    name = "norm_div"

    def call(self, model: ir.Model) -> PassReport:
        rules, rewritten = norm_div_rules(), 0
        for mul in [n for n in model.graph if n.op_type == "Mul" and n.domain == ""]:
            if any(rewrite_at(rule, model, mul) for rule in rules):
                rewritten += 1
        return PassReport(model, rewritten > 0, {"rewritten": rewritten})
