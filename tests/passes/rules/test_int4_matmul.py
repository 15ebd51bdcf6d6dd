"""The INT4 MatMul matcher: what it binds (checked against numpy and against ONNX Runtime on the
QDQ graph), which MatMuls are candidates, and each refusal with the reason the lowerings report."""

import numpy as np
import pytest

from smoothrot.passes.rules.int4_matmul import Int4MatMul, match_int4_matmul, reads_int4_weight
from tests.passes.rules._models import floats, ints, node, op_types, parse, run, to_int4

K, N, G = 64, 32, 16
RNG = np.random.default_rng(4)
Q = RNG.integers(-8, 8, (K, N))
SCALES = {0: RNG.uniform(0.01, 0.1, (K // G, N)), 1: RNG.uniform(0.01, 0.1, (K, N // G))}
X = RNG.standard_normal((3, K)).astype(np.float32)


def _layer(axis: int = 0, block: int = G, scale_shape=None, zero_point: bool = False):
    scale = SCALES[axis] if scale_shape is None else np.full(scale_shape, 0.05)
    shape = ", ".join(map(str, scale.shape))
    zp = f", int8[{shape}] zp = {{{ints(np.zeros(scale.shape))}}}" if zero_point else ""
    model = parse(f"""
    <ir_version: 10, opset_import: ["" : 21]>
    layer (float[3, {K}] x) => (float[3, {N}] y)
        <int8[{K}, {N}] q = {{{ints(Q)}}}, float[{shape}] s = {{{floats(scale)}}}{zp}> {{
      [dq] w = DequantizeLinear <axis: int = {axis}, block_size: int = {block}>
          (q{", s, zp" if zero_point else ", s"})
      [matmul] y = MatMul(x, w)
    }}
    """)
    to_int4(model, "q")
    if zero_point:
        to_int4(model, "zp")
    return model


@pytest.mark.parametrize("axis", [0, 1])
def test_blocked_int4_weight_is_matched_and_read(axis):
    model = _layer(axis)
    before = op_types(model)
    matmul = node(model, "matmul")
    assert reads_int4_weight(matmul)
    match = match_int4_matmul(model, matmul)
    assert match, match.reason
    assert match.bindings["x"] is model.graph.inputs[0]
    assert {n.name for n in match.nodes} == {"matmul", "dq"}
    found = Int4MatMul.of(match)
    assert (found.matmul, found.dq) == (matmul, node(model, "dq"))
    assert (found.axis, found.group) == (axis, G)
    np.testing.assert_array_equal(found.q, Q)
    np.testing.assert_array_equal(found.scale, SCALES[axis].astype(np.float32))
    weight = found.q * np.repeat(found.scale, G, axis=axis)  # the weight the matched values give
    want = run(model, {"x": X})[0]
    np.testing.assert_allclose(X.astype(np.float64) @ weight, want, rtol=1e-5, atol=1e-5)
    assert op_types(model) == before  # a matcher: the graph is unchanged


def test_only_matmuls_of_int4_weights_are_candidates():
    model = parse(f"""
    <ir_version: 10, opset_import: ["" : 21]>
    layer (float[3, {K}] x) => (float[3, {N}] y) <float[{K}, {N}] w = {{{floats(Q)}}}> {{
      [matmul] y = MatMul(x, w)
    }}
    """)
    assert not reads_int4_weight(node(model, "matmul"))


@pytest.mark.parametrize(
    ("layer", "reason"),
    [
        (lambda: _layer(zero_point=True), "has a zero point"),
        (lambda: _layer(block=5), "DequantizeLinear axis 0, block_size 5 is not a blocked INT4"),
        (lambda: _layer(block=0), "DequantizeLinear axis 0, block_size 0 is not a blocked INT4"),
        (lambda: _layer(scale_shape=(K // 32, N)), "scale [2, 32] does not block weight [64, 32]"),
    ],
    ids=["zero-point", "block-5", "not-blocked", "scale-shape"],
)
def test_int4_matmul_of_another_form_is_refused_with_the_reason(layer, reason):
    model = layer()
    matmul = node(model, "matmul")
    assert reads_int4_weight(matmul)
    match = match_int4_matmul(model, matmul)
    assert not match and match.reason.startswith(reason)
    with pytest.raises(ValueError, match="not an INT4 MatMul"):
        Int4MatMul.of(match)


def test_run_time_scale_is_refused():
    model = _layer()
    node(model, "dq").replace_input_with(1, model.graph.inputs[0])  # a non-constant scale
    model.graph.initializers.pop("s")
    match = match_int4_matmul(model, node(model, "matmul"))
    assert not match and match.reason == "scale is not a constant, or the weight is not 2-D"
