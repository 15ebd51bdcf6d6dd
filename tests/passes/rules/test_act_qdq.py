"""The per-token INT8 activation QDQ matcher: the raw input it binds (and the QDQ's values in ONNX
Runtime against the numpy reference), each refusal with the reason the plugin lowering reports."""

import numpy as np
import pytest

from smoothrot.core.qdq import QuantBits, dynamic_qdq_reference
from smoothrot.passes.rules.act_qdq import PAIR_MISMATCH, SCALE_MISMATCH, match_act_qdq
from tests.passes.rules._models import node, op_types, parse, run

C = 16
X = (np.random.default_rng(5).standard_normal((4, C)) * np.geomspace(0.1, 50, C)).astype(np.float32)


def _qdq(
    out_type: int = 3, qmax: float = 127.0, tiny: float = 1e-12, axis: int = -1, block: int = C
) -> str:
    attrs = f"axis: int = {axis}, block_size: int = {block}"
    return f"""
    <ir_version: 10, opset_import: ["" : 21]>
    qdq (float[4, {C}] x) => (float[4, {C}] y)
        <int64[1] axes = {{-1}}, float qmax = {{{qmax}}}, float tiny = {{{tiny}}},
         float[4, 1] other = {{1.0, 2.0, 3.0, 4.0}}> {{
      [abs] a = Abs(x)
      [absmax] m = ReduceMax <keepdims: int = 1> (a, axes)
      [div] d = Div(m, qmax)
      [scale] s = Max(d, tiny)
      [quantize] q = QuantizeLinear <{attrs}, output_dtype: int = {out_type}> (x, s)
      [dq] y = DequantizeLinear <{attrs}> (q, s)
    }}
    """


DEQUANTIZE = f"DequantizeLinear <axis: int = -1, block_size: int = {C}> (q, s)"


def test_per_token_int8_qdq_is_matched_to_its_raw_input():
    model = parse(_qdq())
    before = op_types(model)
    match = match_act_qdq(model, node(model, "dq"), C)
    assert match, match.reason
    assert match.bindings["x"] is model.graph.inputs[0]
    assert {n.name for n in match.nodes} == {"quantize", "dq"}
    want = dynamic_qdq_reference(X, QuantBits.INT8)  # what the w4a8 plugin quantizes x to
    np.testing.assert_array_equal(run(model, {"x": X})[0], want)
    assert op_types(model) == before


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (_qdq(out_type=22, qmax=7.0), "activation QDQ is not INT8"),
        (_qdq(axis=0, block=4), "activation QDQ is not along the last axis"),
        (_qdq(block=8), f"activation QDQ blocks are not whole rows of {C}"),
        (_qdq(tiny=2.0**-14), SCALE_MISMATCH),
        (_qdq(qmax=100.0), SCALE_MISMATCH),
        (_qdq().replace("Max(d, tiny)", "Add(d, tiny)"), SCALE_MISMATCH),
        (_qdq().replace("(q, s)", "(q, other)"), PAIR_MISMATCH),
        (_qdq().replace(DEQUANTIZE, "Identity(q)"), PAIR_MISMATCH),
    ],
    ids=["int4", "axis", "block", "raised-floor", "qmax", "no-max", "two-scales", "no-dq"],
)
def test_other_activation_qdq_forms_are_refused_with_the_reason(text, reason):
    model = parse(text)
    match = match_act_qdq(model, node(model, "dq"), C)
    assert not match and match.reason.startswith(reason)
