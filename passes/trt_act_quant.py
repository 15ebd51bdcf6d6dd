"""Rewrite runtime-scaled QDQ pairs into the arithmetic TensorRT can build.

TensorRT's QuantizeLinear needs a build-time constant scale; the per-token activation QDQ and
the KV-cache QDQ of our graphs (:mod:`smoothrot.passes._qdq`) compute their scale at run time,
and TensorRT-RTX's builder fails on them (Myelin ``CHECK(is_constant())``). This pass rewrites
each ``QuantizeLinear(x, s) → DequantizeLinear(q, s)`` pair whose scale is not a constant into::

    y = Clip(Round(x / s), -qmax - 1, qmax) · s

which is the pair's definition (ONNX ``Round`` rounds half to even, as QuantizeLinear does; the
clip is QuantizeLinear's saturation), so the graph keeps its meaning exactly; the integer tensor
simply never materializes (the rule :mod:`smoothrot.passes.rules.runtime_qdq`). Integer-GEMM
speed for these layers is the plugin path's job (``plugins/w4a8_gemm.py``); the plugin-free
TensorRT-RTX engine runs them as fp16 GEMMs.

Pairs with constant scales (INT4 weights) are TensorRT's native form and stay. A runtime-scaled
QuantizeLinear not followed by its DequantizeLinear alone is reported by name and refused.
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import pattern

from smoothrot.core.pass_infra import PassReport
from smoothrot.passes._graph import is_constant
from smoothrot.passes.rules._apply import Outcome, rewrite_at
from smoothrot.passes.rules.runtime_qdq import RuntimeScaledQdq

__all__ = ["TrtActivationQdqPass"]


def _rewrite_pair(rule: pattern.RewriteRule, model: ir.Model, quant: ir.Node) -> Outcome:
    """The rule at the DequantizeLinear that alone reads ``quant``'s output."""
    out = quant.outputs[0]
    uses = list(out.uses())
    if len(uses) != 1 or uses[0].idx != 0 or out.is_graph_output():
        readers = len(uses) + out.is_graph_output()
        return Outcome(pattern.MatchResult().fail(f"{readers} readers of the quantized tensor"))
    return rewrite_at(rule, model, uses[0].node)


class TrtActivationQdqPass(ir.passes.InPlacePass):
    """``details["rewritten"]``: the name of each QuantizeLinear rewritten."""

    name = "trt_activation_qdq"

    def call(self, model: ir.Model) -> PassReport:
        rule, rewritten = RuntimeScaledQdq().rule(), []
        for quant in [n for n in model.graph if n.op_type == "QuantizeLinear" and n.domain == ""]:
            scale = quant.inputs[1] if len(quant.inputs) > 1 else None
            if scale is None or is_constant(scale):
                continue
            outcome = _rewrite_pair(rule, model, quant)
            if not outcome:
                raise ValueError(
                    f"QuantizeLinear {quant.name!r} has a run-time scale but is not a symmetric "
                    f"INT8/INT4 QDQ pair; TensorRT cannot build it ({outcome.reason})"
                )
            rewritten.append(quant.name or "qdq")
        return PassReport(model, bool(rewritten), {"rewritten": rewritten})
