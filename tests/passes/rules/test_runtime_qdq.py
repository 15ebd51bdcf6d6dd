"""Run-time-scaled QDQ pair → ``Div, Round, Clip, Mul``: the op types, names and metadata left,
bit-identical values in ONNX Runtime, constant scales left alone, refusals, idempotence."""

import numpy as np
import pytest

from smoothrot.core.qdq import QuantBits, dynamic_qdq_reference
from smoothrot.passes.rules._apply import rewrite_at
from smoothrot.passes.rules.runtime_qdq import RuntimeScaledQdq
from smoothrot.passes.trt_act_quant import TrtActivationQdqPass
from tests.passes.rules._models import copy, node, op_types, parse, run

ONNX_TYPE = {8: 3, 4: 22}  # TensorProto INT8, INT4
RNG = np.random.default_rng(1)
X = (RNG.standard_normal((4, 16)) * np.geomspace(0.01, 300, 16)).astype(np.float32)
X[0] = 0.0  # the scale floor
X[1, :4] = [0.5, 1.5, -2.5, 3.5]  # halves: round half to even in both forms


def _qdq(bits: int = 8, out_type: int | None = None, pairs: int = 1, scale: str = "") -> str:
    """``pairs`` per-token QDQs in a row (over rows of 16); the last one's output is ``y``.
    ``scale``: the pairs' scale instead of the run-time one (``other``, a constant)."""
    out_type = ONNX_TYPE[bits] if out_type is None else out_type
    body, src = [], "x"
    for i in range(pairs):
        t = f"t{i}"
        s = scale or f"{t}_s"
        body += [
            f"[{t}_abs] {t}_a = Abs({src})",
            f"[{t}_absmax] {t}_m = ReduceMax <keepdims: int = 1> ({t}_a, axes)",
            f"[{t}_div] {t}_d = Div({t}_m, qmax)",
            f"[{t}_scale] {t}_s = Max({t}_d, tiny)",
            f"[{t}_quantize] {t}_q = QuantizeLinear <axis: int = -1, block_size: int = 16, "
            f"output_dtype: int = {out_type}> ({src}, {s})",
            f"[{t}_dq] {t}_y = DequantizeLinear <axis: int = -1, block_size: int = 16> "
            f"({t}_q, {s})",
        ]
        src = f"{t}_y"
    body.append(f"[out] y = Identity({src})")
    lines = "\n      ".join(body)
    return f"""
    <ir_version: 10, opset_import: ["" : 21]>
    qdq (float[4, 16] x) => (float[4, 16] y)
        <int64[1] axes = {{-1}}, float qmax = {{{float(2 ** (bits - 1) - 1)}}},
         float tiny = {{1e-12}}, float[4, 1] other = {{1.0, 2.0, 3.0, 4.0}}> {{
      {lines}
    }}
    """


def _marked(text: str):
    model = parse(text)
    for n in model.graph:
        n.metadata_props["smoothrot.act_quant"] = "int8"
    return model


@pytest.mark.parametrize("bits", [8, 4])
def test_pair_becomes_exact_arithmetic(bits):
    model = _marked(_qdq(bits))
    before = copy(model)
    rewrite = TrtActivationQdqPass()
    result = rewrite(model)
    assert result.modified and result.details == {"rewritten": ["t0_quantize"]}
    scale = ["Abs", "ReduceMax", "Div", "Max"]
    assert op_types(model) == [*scale, "Div", "Round", "Clip", "Mul", "Identity"]
    new = [node(model, f"t0_quantize.{step}") for step in ("div", "round", "clip", "mul")]
    assert all(n.metadata_props["smoothrot.act_quant"] == "int8" for n in new)
    kind = f"int{bits}"
    assert [v.name for v in new[2].inputs[1:]] == [
        f"smoothrot.trt_qdq.{kind}.low",
        f"smoothrot.trt_qdq.{kind}.high",
    ]
    assert new[-1].outputs[0].name == "t0_y"
    got, want = run(model, {"x": X})[0], run(before, {"x": X})[0]
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(want, dynamic_qdq_reference(X, QuantBits(bits)))
    again = rewrite(model)
    assert not again.modified and again.details == {"rewritten": []}


def test_pairs_share_one_set_of_clip_bounds():
    model = _marked(_qdq(8, pairs=2))
    before = copy(model)
    assert TrtActivationQdqPass()(model).details["rewritten"] == ["t0_quantize", "t1_quantize"]
    bounds = sorted(n for n in model.graph.initializers if n.startswith("smoothrot.trt_qdq"))
    assert bounds == ["smoothrot.trt_qdq.int8.high", "smoothrot.trt_qdq.int8.low"]
    np.testing.assert_array_equal(run(model, {"x": X})[0], run(before, {"x": X})[0])


def test_constant_scale_is_left_alone():
    model = parse(_qdq(8, scale="other"))
    before = op_types(model)
    outcome = rewrite_at(RuntimeScaledQdq().rule(), model, node(model, "t0_dq"))
    assert not outcome and outcome.reason.startswith("the scale is a constant")
    result = TrtActivationQdqPass()(model)
    assert not result.modified and op_types(model) == before


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (_qdq(8, out_type=2), "the QuantizeLinear writes UINT8, not INT8 or INT4"),
        (_qdq(8).replace("(t0_q, t0_s)", "(t0_q, other)"), "Binding failure"),
    ],
    ids=["uint8", "other-scale"],
)
def test_pair_that_is_not_symmetric_int8_or_int4_is_refused(text, reason):
    model = parse(text)
    outcome = rewrite_at(RuntimeScaledQdq().rule(), model, node(model, "t0_dq"))
    assert not outcome and reason in outcome.reason
    with pytest.raises(ValueError, match="t0_quantize.*not a symmetric.*" + reason):
        TrtActivationQdqPass()(model)
