"""INT4 reference quantizer, clip search, GPTQ: grid, exactness vs ORT DequantizeLinear, errors."""

import ml_dtypes
import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest

from smoothrot.core.int4 import (
    Grouping,
    fit_group_size,
    local_hessian,
    local_output_error,
    output_error,
    quantize_rtn,
    search_clip,
)
from smoothrot.passes.gptq import gptq

RNG = np.random.default_rng(0)


def _layer(k=256, n=192, tokens=2048):
    x = RNG.standard_normal((tokens, k)) * np.exp(RNG.standard_normal(k))
    x[:, 3] *= 30.0  # an outlier input channel
    x = x @ (np.eye(k) + 0.3 * RNG.standard_normal((k, k)) / np.sqrt(k))  # correlated channels
    b = RNG.standard_normal((k, n)) * 0.05
    return b.astype(np.float32), x.T @ x


def _ort_dequantize(q: np.ndarray, scale: np.ndarray, axis: int, block: int) -> np.ndarray:
    w = ir.Value(
        name="w",
        type=ir.TensorType(ir.DataType.INT4),
        shape=ir.Shape(list(q.shape)),
        const_value=ir.tensor(q.astype(ml_dtypes.int4), name="w"),
    )
    s = ir.Value(
        name="s",
        type=ir.TensorType(ir.DataType.FLOAT),
        shape=ir.Shape(list(scale.shape)),
        const_value=ir.tensor(scale, name="s"),
    )
    dq = ir.node("DequantizeLinear", [w, s], attributes={"axis": axis, "block_size": block})
    y = dq.outputs[0]
    y.name, y.type = "y", ir.TensorType(ir.DataType.FLOAT)
    graph = ir.Graph([], [y], nodes=[dq], initializers=[w, s], opset_imports={"": 21})
    proto = ir.serde.serialize_model(ir.Model(graph, ir_version=10))
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {})[0]


@pytest.mark.parametrize("grouping", list(Grouping))
@pytest.mark.parametrize("algorithm", ["rtn", "gptq"])
def test_dequantized_weights_equal_ort_dequantize_linear(grouping, algorithm):
    b, h = _layer()
    block = 64
    if algorithm == "rtn":
        qw = quantize_rtn(b, grouping, block, search_clip(b, h, grouping, block))
    else:
        qw = gptq(b, h, grouping, block, 0.9)
    assert qw.q.dtype == np.int8 and qw.q.min() >= -8 and qw.q.max() <= 7
    expected_scale = (256 // block, 192) if grouping is Grouping.PER_OC else (256, 192 // block)
    assert qw.scale.shape == expected_scale and qw.scale.dtype == np.float32
    got = _ort_dequantize(qw.q, qw.scale, grouping.axis, block)
    np.testing.assert_array_equal(got, qw.dequantize())  # bit-exact


def test_rtn_is_exact_on_grid_data_and_symmetric():
    scale = np.float32(0.25)
    q = RNG.integers(-7, 8, size=(64, 32)).astype(np.float32)
    q[0, :] = 7  # every column reaches the grid's max, so max|B|/7 recovers the scale
    qw = quantize_rtn(q * scale, Grouping.PER_OC, 64)
    np.testing.assert_array_equal(qw.dequantize(), q * scale)
    neg = quantize_rtn(-q * scale, Grouping.PER_OC, 64)
    np.testing.assert_array_equal(neg.q, -qw.q)


def test_fit_group_size():
    assert fit_group_size(1536, 128) == 128
    assert fit_group_size(576, 128) == 64  # the default model's hidden size
    assert fit_group_size(192, 128) == 64
    assert fit_group_size(576, 0) == 576  # per channel
    with pytest.raises(ValueError, match="divides 100"):
        fit_group_size(100, 64)


@pytest.mark.parametrize("grouping", list(Grouping))
def test_clip_search_and_gptq_lower_the_output_error(grouping):
    b, h = _layer()
    block = 64
    plain = output_error(quantize_rtn(b, grouping, block).dequantize() - b, h).sum()
    clip = search_clip(b, h, grouping, block)
    clipped = output_error(quantize_rtn(b, grouping, block, clip).dequantize() - b, h).sum()
    tuned = output_error(gptq(b, h, grouping, block, clip).dequantize() - b, h).sum()
    assert clipped <= plain  # the grid contains 1.0, so the search can only help
    assert tuned < 0.7 * clipped  # GPTQ's error feedback must pay off on correlated inputs


def test_gptq_with_identity_hessian_is_rtn():
    """Without correlation GPTQ has nothing to spread: it must reduce to RTN."""
    b, _ = _layer()
    h = np.eye(b.shape[0]) * 10.0
    for grouping in Grouping:
        rtn = quantize_rtn(b, grouping, 64, 1.0)
        ours = gptq(b, h, grouping, 64, 1.0, damp=1e-6)
        np.testing.assert_array_equal(ours.q, rtn.q)


def test_adadim_prefers_per_ic_when_a_weight_row_is_an_outlier():
    """A huge input row spoils every per-OC group it is in; per-IC isolates it in its own groups."""
    b, h = _layer()
    b[5, :] *= 40.0
    errs = {}
    for grouping in Grouping:
        clip = search_clip(b, h, grouping, 64)
        errs[grouping] = output_error(quantize_rtn(b, grouping, 64, clip).dequantize() - b, h).sum()
    assert errs[Grouping.PER_IC] < errs[Grouping.PER_OC]


@pytest.mark.parametrize("grouping", list(Grouping))
def test_local_clip_search_is_exact_on_a_block_diagonal_hessian(grouping):
    """The large-Linear clip search measures errors on H's diagonal blocks: on a Hessian that
    is block diagonal it chooses what the full search chooses, and the local error is the
    full one; on a general H it is a proxy, computed in K·local·N."""
    b, h = _layer()
    k = b.shape[0]
    local = 32
    mask = np.kron(np.eye(k // local), np.ones((local, local))).astype(bool)
    hb = np.where(mask, h, 0.0)
    np.testing.assert_array_equal(
        search_clip(b, hb, grouping, 64, local=local), search_clip(b, hb, grouping, 64)
    )
    delta = quantize_rtn(b, grouping, 64, 0.9).dequantize() - b
    np.testing.assert_allclose(
        local_output_error(delta, local_hessian(h, local)), output_error(delta, hb), rtol=1e-4
    )
    with pytest.raises(ValueError, match="does not divide"):
        local_hessian(h, 7 if k % 7 else 5)
