"""smoothrot.ort::GroupedAttention: masked softmax attention over grouped K/V heads, vs numpy."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from smoothrot.ortops.spec import DOMAIN, OP_TYPE_ATTENTION, reference_attention
from tests.ortops.test_matmul_int4_per_ic import _session

FMIN = float(np.finfo(np.float32).min)  # the exporter's masked value


def _model(scale: float, masked: float):
    node = helper.make_node(
        OP_TYPE_ATTENTION,
        ["Q", "K", "V", "M"],
        ["Y"],
        domain=DOMAIN,
        scale=scale,
        masked_value=masked,
    )
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in "QKV"]
    inputs.append(helper.make_tensor_value_info("M", TensorProto.BOOL, None))
    graph = helper.make_graph(
        [node], "g", inputs, [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)]
    )
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid(DOMAIN, 1)]
    return helper.make_model(graph, opset_imports=opsets)


def _problem(b, h, kv, s, t, d, mask_shape, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((b, h, s, d)).astype(np.float32)
    k = rng.standard_normal((b, kv, t, d)).astype(np.float32)
    v = rng.standard_normal((b, kv, t, d)).astype(np.float32)
    causal = np.arange(t)[None, :] <= np.arange(t - s, t)[:, None]  # [S, T]
    mask = np.broadcast_to(causal, mask_shape).copy()
    return q, k, v, mask


CASES = [  # B, H, KV, S, T, D, mask shape
    (1, 9, 3, 1, 130, 64, (1, 1, 1, 130)),  # the default model's decode step
    (1, 9, 3, 7, 7, 64, (1, 1, 7, 7)),  # prefill, causal
    (2, 4, 2, 3, 10, 12, (2, 1, 3, 10)),  # D not a multiple of 8, batch 2
    (2, 4, 4, 2, 5, 16, (1, 4, 2, 5)),  # KV = H, mask broadcast over batch, per head
    (1, 2, 1, 1, 1, 8, (1, 1, 1, 1)),  # the first token
]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(("b", "h", "kv", "s", "t", "d", "mask_shape"), CASES)
def test_attention_op_matches_the_reference(built, b, h, kv, s, t, d, mask_shape, threads):
    q, k, v, mask = _problem(b, h, kv, s, t, d, mask_shape)
    scale = 1 / np.sqrt(d)
    (y,) = _session(_model(scale, FMIN), threads).run(None, {"Q": q, "K": k, "V": v, "M": mask})
    ref = reference_attention(q, k, v, mask, scale, FMIN)
    assert y.shape == q.shape and y.dtype == np.float32
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)
    # The reference is what the exporter's graph computes: repeated heads, masked scores.
    rep = np.repeat(k.astype(np.float64), h // kv, axis=1), np.repeat(v, h // kv, axis=1)
    scores = scale * q @ rep[0].swapaxes(-1, -2) + np.where(mask, 0.0, FMIN)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    np.testing.assert_allclose(ref, (p / p.sum(-1, keepdims=True)) @ rep[1], rtol=1e-4, atol=1e-5)


def test_fully_masked_rows(built):
    q, k, v, mask = _problem(1, 2, 1, 2, 4, 8, (1, 2, 2, 4))
    mask[0, 0, 1] = False  # head 0, query row 1 sees nothing
    feeds = {"Q": q, "K": k, "V": v, "M": mask}
    (y,) = _session(_model(0.5, -np.inf), 1).run(None, feeds)
    assert np.all(y[0, 0, 1] == 0.0)  # softmax of all -inf is NaN: the guard writes 0
    np.testing.assert_allclose(y, reference_attention(q, k, v, mask, 0.5, -np.inf), atol=1e-5)
    (y,) = _session(_model(0.5, FMIN), 1).run(None, feeds)  # finite: a uniform average
    np.testing.assert_allclose(y[0, 0, 1], v[0, 0].mean(axis=0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("shapes", "message"),
    [
        (((1, 4, 1, 8), (1, 3, 5, 8), (1, 3, 5, 8), (1, 1, 1, 5)), "KV \\| H"),
        (((1, 4, 1, 8), (1, 2, 5, 8), (1, 2, 4, 8), (1, 1, 1, 5)), "V shaped like K"),
        (((1, 4, 1, 8), (1, 2, 5, 8), (1, 2, 5, 8), (1, 1, 2, 5)), "mask must be"),
    ],
)
def test_attention_op_rejects_bad_shapes(built, shapes, message):
    feeds = {n: np.zeros(sh, np.float32) for n, sh in zip("QKV", shapes[:3], strict=True)}
    feeds["M"] = np.ones(shapes[3], bool)
    with pytest.raises(Exception, match=message):
        _session(_model(1.0, FMIN), 1).run(None, feeds)
