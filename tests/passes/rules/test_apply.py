"""The rule driver: reasons out of onnxscript for one node, the replacement spliced in with its
initializers named and the matched nodes' dead constants dropped, nothing changed on a failure."""

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from smoothrot.passes._graph import constant_array
from smoothrot.passes.rules._apply import match_at, rewrite_at
from tests.passes.rules._models import copy, node, op_types, parse, run

TEXT = """
<ir_version: 10, opset_import: ["" : 21]>
adds (float[2, 4] x) => (float[2, 4] y, float[2, 4] z)
    <float[4] c = {1.0, 2.0, 3.0, 4.0}, float[4] neg = {5.0, 6.0, 7.0, 8.0}> {
  [first] a = Add(x, c)
  [second] y = Add(a, c)
  [other] z = Mul(x, neg)
}
"""
X = np.arange(8, dtype=np.float32).reshape(2, 4)


class _AddToSub(pattern.RewriteRuleClassBase):
    """``Add(x, c)`` with ``c`` constant → ``Sub(x, -c)``, a new initializer named ``neg``."""

    def pattern(self, op, x, c):
        return op.Add(x, c, _outputs=["total"])

    def check(self, context, c, **_):
        if c.const_value is None:
            return pattern.MatchResult().fail("c is not a constant", c)
        return pattern.MatchResult()

    def rewrite(self, op, x, c, total, **_):
        negated = op.initializer(ir.tensor(-constant_array(c), name="neg"))
        return op.Sub(x, negated, _name=f"{total.producer().name}.sub")


def test_rewrite_names_new_initializers_and_drops_only_dead_ones():
    model = parse(TEXT)
    before = copy(model)
    rule = _AddToSub().rule()
    first = rewrite_at(rule, model, node(model, "first"))
    assert first and [(n.op_type, n.name) for n in first.nodes] == [("Sub", "first.sub")]
    assert [v.name for v in first.nodes[0].inputs] == ["x", "neg.1"]  # "neg" was taken
    assert "c" in model.graph.initializers  # the second Add still reads it
    second = rewrite_at(rule, model, node(model, "second"))
    assert second and second.nodes[0].outputs[0].name == "y"
    assert sorted(model.graph.initializers) == ["neg", "neg.1", "neg.2"]  # c is gone
    assert op_types(model) == ["Sub", "Sub", "Mul"]
    for got, want in zip(run(model, {"x": X}), run(before, {"x": X}), strict=True):
        np.testing.assert_array_equal(got, want)


def test_a_failed_rewrite_changes_nothing_and_says_why():
    model = parse(TEXT.replace("Add(a, c)", "Add(a, x)"))
    before = op_types(model), sorted(model.graph.initializers)
    outcome = rewrite_at(_AddToSub().rule(), model, node(model, "second"))
    assert not outcome and outcome.reason == "c is not a constant" and outcome.nodes == ()
    assert (op_types(model), sorted(model.graph.initializers)) == before


def test_match_reasons_for_a_node_that_is_not_the_pattern():
    model = parse(TEXT)
    other = node(model, "other")
    generic = match_at(_AddToSub(), model, other)
    assert not generic and generic.reason == "Mul node 'other' is not the pattern's output node"
    worded = match_at(_AddToSub(), model, other, mismatch="not an Add")
    assert worded.reason == "not an Add"
    found = match_at(_AddToSub(), model, node(model, "first"), removable=False)
    assert found and found.bindings["c"].name == "c"
