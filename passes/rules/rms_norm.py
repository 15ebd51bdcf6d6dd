"""The exporter's decomposed RMSNorm, one pattern for the model map and the fp16 conversion.

``torch.onnx`` writes ``RMSNorm(x) = γ · x / √(mean(x²) + ε)`` as::

    Mul(γ, Mul(x, Reciprocal(Sqrt(Add(ReduceMean(Pow(x, 2)), ε)))))

with ``γ`` an initializer (either operand order of each Mul and of the Add). :func:`match_rms_norm`
matches it at the ``Mul`` by ``γ`` and returns the ``MatchResult``: ``bindings`` ``x`` (the
residual stream), ``gamma``, and the statistics values ``squared``, ``mean``, ``variance``,
``rms``, ``inverse`` (the outputs of ``Pow, ReduceMean, Add, Sqrt, Reciprocal``, the chain the
fp16 conversion keeps in fp32); :func:`statistics_nodes` lists those five nodes.

A matcher, not a rewrite rule: the norm is recognized (``find_norms``) and its nodes read, never
replaced; the nodes may feed other readers, so they are not required to be removable.
"""

from __future__ import annotations

import itertools

import onnx_ir as ir
from onnxscript.rewriter import pattern

from smoothrot.passes._graph import scalar_constant
from smoothrot.passes.rules._apply import match_at

__all__ = ["STATISTICS", "DecomposedRmsNorm", "match_rms_norm", "statistics_nodes"]

STATISTICS = ("squared", "mean", "variance", "rms", "inverse")  # Pow … Reciprocal outputs


def _ordered(a, b, swap: bool) -> tuple:
    return (b, a) if swap else (a, b)


class DecomposedRmsNorm(pattern.PatternBase):
    """``Mul(γ, Mul(x, Reciprocal(Sqrt(Add(ReduceMean(Pow(x, 2)), ε)))))`` for one operand order:
    ``gamma_first`` (γ is the outer Mul's first input), ``x_first`` (x is the inner Mul's),
    ``mean_first`` (the mean is the Add's)."""

    def __init__(self, gamma_first: bool, x_first: bool, mean_first: bool) -> None:
        super().__init__(f"DecomposedRmsNorm{int(gamma_first)}{int(x_first)}{int(mean_first)}")
        self.gamma_first, self.x_first, self.mean_first = gamma_first, x_first, mean_first

    def pattern(self, op, x, exponent, eps, gamma):
        squared = op.Pow(x, exponent, _outputs=["squared"])
        mean = op.ReduceMean(squared, _allow_other_inputs=True, _outputs=["mean"])
        variance = op.Add(*_ordered(mean, eps, not self.mean_first), _outputs=["variance"])
        rms = op.Sqrt(variance, _outputs=["rms"])
        inverse = op.Reciprocal(rms, _outputs=["inverse"])
        normed = op.Mul(*_ordered(x, inverse, not self.x_first), _outputs=["normed"])
        return op.Mul(*_ordered(gamma, normed, not self.gamma_first))

    def check(self, context, exponent: ir.Value, gamma: ir.Value, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        if not gamma.is_initializer():
            return result.fail("γ is not an initializer", gamma)
        if scalar_constant(exponent) != 2.0:
            return result.fail("Pow does not square", exponent)
        return result


# The order the model map has always tried: γ first, then x second (the Reciprocal first),
# then the mean first.
_ORDERS = list(itertools.product((True, False), (False, True), (True, False)))


def match_rms_norm(model: ir.Model, node: ir.Node) -> pattern.MatchResult:
    """The decomposed RMSNorm whose ``Mul`` by γ is ``node``, or why ``node`` is not one (the
    reason of the operand order that matched the most nodes)."""
    best = pattern.MatchResult().fail(f"{node.op_type} node {node.name!r} is not a Mul", node)
    if node.op_type != "Mul" or node.domain != "":
        return best
    # Fresh patterns per call: a pattern's matcher keeps the last graph it matched, which
    # module-level patterns would hold (weights and all) after the model is dropped.
    for gamma_first, x_first, mean_first in _ORDERS:
        rule = DecomposedRmsNorm(gamma_first, x_first, mean_first)
        found = match_at(rule, model, node, removable=False)
        if found:
            return found
        if len(found.nodes) > len(best.nodes):
            best = found
    return best


def statistics_nodes(match: pattern.MatchResult) -> tuple[ir.Node, ...]:
    """``Pow, ReduceMean, Add, Sqrt, Reciprocal`` of a successful :func:`match_rms_norm`."""
    nodes = tuple(match.bindings[name].producer() for name in STATISTICS)
    assert all(node is not None for node in nodes)
    return nodes  # type: ignore[return-value]
