"""The decomposed RMSNorm pattern: every operand order, what it binds (γ, ε and x reproduce the
norm's ONNX Runtime output in numpy), the statistics chain the fp16 pass keeps, refusals."""

import itertools

import numpy as np
import pytest

from smoothrot.passes._graph import constant_array
from smoothrot.passes.model_map import find_norms
from smoothrot.passes.rules.rms_norm import match_rms_norm, statistics_nodes
from tests.passes.rules._models import floats, node, op_types, parse, run

H = 8
RNG = np.random.default_rng(6)
GAMMA = RNG.uniform(0.5, 1.5, H)
X = (RNG.standard_normal((2, 3, H)) * 30).astype(np.float32)
EPS = 1e-5


def _norm(
    gamma_first=False, x_first=True, mean_first=True, exponent=2.0, gamma="gamma", extra=""
) -> str:
    def pair(a, b, first):
        return f"{a}, {b}" if first else f"{b}, {a}"

    return f"""
    <ir_version: 10, opset_import: ["" : 21]>
    norm (float[2, 3, {H}] x, float[{H}] g) => (float[2, 3, {H}] y)
        <float two = {{{exponent}}}, int64[1] axes = {{-1}}, float eps = {{{EPS}}},
         float[{H}] gamma = {{{floats(GAMMA)}}}> {{
      [pow] sq = Pow(x, two)
      [mean] ms = ReduceMean <keepdims: int = 1> (sq, axes)
      [add] var = Add({pair("ms", "eps", mean_first)})
      [sqrt] rms = Sqrt(var)
      [recip] inv = Reciprocal(rms)
      [mul_x] normed = Mul({pair("x", "inv", x_first)})
      [mul_gamma] y = Mul({pair(gamma, "normed", gamma_first)})
      {extra}
    }}
    """


ORDERS = list(itertools.product((False, True), repeat=3))


@pytest.mark.parametrize(("gamma_first", "x_first", "mean_first"), ORDERS)
def test_every_operand_order_is_one_rms_norm(gamma_first, x_first, mean_first):
    model = parse(_norm(gamma_first, x_first, mean_first))
    before = op_types(model)
    match = match_rms_norm(model, node(model, "mul_gamma"))
    assert match, match.reason
    x, gamma = match.bindings["x"], match.bindings["gamma"]
    assert x is model.graph.inputs[0] and gamma.name == "gamma"
    stats = statistics_nodes(match)
    assert [n.name for n in stats] == ["pow", "mean", "add", "sqrt", "recip"]
    eps = float(constant_array(match.bindings["eps"]))
    x64 = X.astype(np.float64)
    want = x64 / np.sqrt((x64**2).mean(-1, keepdims=True) + eps) * constant_array(gamma)
    got = run(model, {"x": X, "g": GAMMA.astype(np.float32)})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    [norm] = find_norms(model)  # the model map's view of the same match
    assert (norm.input, norm.gamma, norm.node.name) == (x, gamma, "mul_gamma")
    assert norm.output.name == "y" and norm.statistics == stats
    assert op_types(model) == before


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (_norm(gamma="g"), "γ is not an initializer"),
        (_norm(exponent=3.0), "Pow does not square"),
        (_norm().replace("Pow(x, two)", "Pow(g, two)"), "Binding failure"),
    ],
    ids=["gamma-input", "cube", "other-x"],
)
def test_a_product_that_is_not_an_rms_norm_is_refused(text, reason):
    model = parse(text)
    match = match_rms_norm(model, node(model, "mul_gamma"))
    assert not match and reason in match.reason
    assert find_norms(model) == []


def test_only_the_mul_by_gamma_is_the_norm():
    model = parse(_norm())
    for name in ("mul_x", "pow", "recip"):
        assert not match_rms_norm(model, node(model, name))
    assert [n.node.name for n in find_norms(model)] == ["mul_gamma"]
