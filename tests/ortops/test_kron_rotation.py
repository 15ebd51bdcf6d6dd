"""smoothrot.ort::KroneckerRotation: y = x · (A ⊗ H_p/√p) in one node, vs numpy."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from smoothrot.core.hadamard import rotation_factors
from smoothrot.ortops.spec import DOMAIN, OP_TYPE_ROTATION, reference_rotation
from tests.ortops.test_matmul_int4_per_ic import _session


def _model(a: np.ndarray | None):
    node = helper.make_node(OP_TYPE_ROTATION, ["X", "A"], ["Y"], domain=DOMAIN)
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, None)]
    inits = []
    if a is None:
        inputs.append(helper.make_tensor_value_info("A", TensorProto.FLOAT, None))
    else:
        inits.append(numpy_helper.from_array(a.astype(np.float32), "A"))
    graph = helper.make_graph(
        [node], "g", inputs, [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], inits
    )
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid(DOMAIN, 1)]
    return helper.make_model(graph, opset_imports=opsets)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(
    ("n", "lead"),
    [
        (576, (1,)),
        (1536, (1, 1)),
        (576, (3, 5)),
        (1536, (40,)),
        (64, (2,)),
        (12, (1,)),
        (576, (0,)),
    ],
)
def test_rotation_op_is_the_dense_rotation(built, n, lead, threads) -> None:
    """The default model's factors (576 = 36·16, 1536 = 24·64) and odd ones (12 = 12·1)."""
    factors = rotation_factors(n)
    x = np.random.default_rng(n).standard_normal((*lead, n)).astype(np.float32)
    dense = x.astype(np.float64) @ factors.dense
    ref = reference_rotation(x, factors.a)
    np.testing.assert_allclose(ref, dense, rtol=1e-5, atol=1e-5)
    (y,) = _session(_model(factors.a), threads).run(None, {"X": x})
    assert y.shape == x.shape and y.dtype == np.float32
    np.testing.assert_allclose(y, dense, rtol=1e-4, atol=1e-5)


def test_rotation_op_with_a_random_orthogonal_factor(built) -> None:
    rng = np.random.default_rng(3)
    a, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    x = rng.standard_normal((4, 5 * 32)).astype(np.float32)
    (y,) = _session(_model(a), 1).run(None, {"X": x})
    np.testing.assert_allclose(y, reference_rotation(x, a), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-5)


@pytest.mark.parametrize(
    ("x_shape", "a_shape", "message"),
    [
        ((1, 48), (3, 4), "A must be a square"),
        ((1, 50), (3, 3), "m must divide"),
        ((1, 36), (3, 3), "power of two"),
    ],
)
def test_rotation_op_rejects_bad_shapes(built, x_shape, a_shape, message) -> None:
    session = _session(_model(None), 1)
    x, a = np.zeros(x_shape, np.float32), np.eye(*a_shape, dtype=np.float32)
    with pytest.raises(Exception, match=message):
        session.run(None, {"X": x, "A": a})


def test_rotation_reference_rejects_a_factor_that_leaves_no_power_of_two() -> None:
    with pytest.raises(ValueError, match="power of two"):
        reference_rotation(np.zeros((1, 36)), np.eye(3))
