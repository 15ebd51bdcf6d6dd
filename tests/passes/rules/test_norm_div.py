"""``Mul(x, Reciprocal(Sqrt(v)))`` → ``Div(x, Sqrt(v))``: the op types left, the same values in
ONNX Runtime, readers that keep the Reciprocal, idempotence."""

import numpy as np
import pytest

from smoothrot.passes.norm_div import NormDivPass
from smoothrot.passes.rules._apply import rewrite_at
from smoothrot.passes.rules.norm_div import NormDiv, norm_div_rules
from tests.passes.rules._models import copy, node, op_types, parse, run

X = np.random.default_rng(0).standard_normal((2, 3, 8)).astype(np.float32) * 4


def _norm(product: str = "Mul(x, inv)", source: str = "Sqrt(var)", extra: str = "") -> str:
    outputs = "float[2, 3, 8] y" + (", float[2, 3, 1] extra" if extra else "")
    return f"""
    <ir_version: 10, opset_import: ["" : 21]>
    norm (float[2, 3, 8] x) => ({outputs})
        <float two = {{2.0}}, int64[1] axes = {{-1}}, float eps = {{1e-6}}> {{
      [pow] sq = Pow(x, two)
      [mean] ms = ReduceMean <keepdims: int = 1> (sq, axes)
      [add] var = Add(ms, eps)
      [sqrt] rms = {source}
      [recip] inv = Reciprocal(rms)
      [mul] y = {product}
      {extra}
    }}
    """


@pytest.mark.parametrize("product", ["Mul(x, inv)", "Mul(inv, x)"])
def test_reciprocal_becomes_a_division_with_the_same_values(product):
    model = parse(_norm(product))
    before = copy(model)
    rewrite = NormDivPass()
    result = rewrite(model)
    assert result.modified and result.details == {"rewritten": 1}
    assert op_types(model) == ["Pow", "ReduceMean", "Add", "Sqrt", "Div"]
    div = node(model, "mul.div")
    assert [v.name for v in div.inputs] == ["x", "rms"] and div.outputs[0].name == "y"
    np.testing.assert_allclose(run(model, {"x": X})[0], run(before, {"x": X})[0], rtol=1e-6)
    again = rewrite(model)  # idempotent: no Reciprocal left
    assert not again.modified and again.details == {"rewritten": 0}


def test_the_rule_set_covers_both_operand_orders():
    assert len(norm_div_rules().rules) == 2


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (_norm(source="Exp(var)"), "the Reciprocal does not read a Sqrt"),
        (_norm(product="Mul(inv, inv)"), "the Reciprocal has another reader"),
        (
            _norm(extra="extra = Identity(inv)"),
            "Matched nodes have other uses preventing replacement",
        ),
    ],
    ids=["not-sqrt", "squared-reciprocal", "second-reader"],
)
def test_a_reciprocal_that_must_stay_is_left_alone_with_the_reason(text, reason):
    model = parse(text)
    before = op_types(model)
    outcome = rewrite_at(NormDiv().rule(), model, node(model, "mul"))
    assert not outcome and reason in outcome.reason and not outcome.nodes
    result = NormDivPass()(model)
    assert not result.modified and result.details == {"rewritten": 0}
    assert op_types(model) == before


def test_the_rules_are_plain_onnxscript_rules():
    """onnxscript's own driver applies them too (the pass drives them one node at a time)."""
    model = parse(_norm("Mul(inv, x)"))
    before = copy(model)
    assert norm_div_rules().apply_to_model(model) == 1
    assert op_types(model) == ["Pow", "ReduceMean", "Add", "Sqrt", "Div"]
    np.testing.assert_allclose(run(model, {"x": X})[0], run(before, {"x": X})[0], rtol=1e-6)
