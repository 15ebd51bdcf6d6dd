"""smoothrot.ort::MatMulInt4PerOC: MatMulNBits' grouping (scales [N, K/group]) in our library."""

from __future__ import annotations

import numpy as np
import pytest

from smoothrot.ortops.spec import OP_TYPE_PER_OC, pack_per_ic, reference
from tests.ortops.test_matmul_int4_per_ic import _model, _session


def _problem(k: int, n: int, group: int, lead: tuple[int, ...], seed: int = 0):
    rng = np.random.default_rng(seed)
    q = rng.integers(-8, 8, size=(k, n))
    scale = (rng.random((k // group, n)) * 0.02 + 0.001).astype(np.float32)  # QDQ layout
    a = rng.standard_normal((*lead, k)).astype(np.float32)
    qdq = a.astype(np.float64) @ (q * np.repeat(scale.astype(np.float64), group, axis=0))
    return a, pack_per_ic(q), np.ascontiguousarray(scale.T), qdq


CASES = [
    # (K, N, group, leading dims of A): int8 GEMV where M = 1 and group % 64 == 0
    (64, 32, 64, (1,)),
    (576, 45, 64, (1,)),  # rows not a multiple of 4
    (256, 96, 128, (1, 1)),
    (1536, 64, 128, (1,)),
    (512, 64, 32, (1,)),  # group 32 and 16: the dequantizing path at every level
    (48, 40, 16, (1,)),
    (192, 96, 64, (3,)),  # several rows: dequantizing path
    (128, 64, 128, (17,)),
    (128, 64, 64, (0,)),
]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(("k", "n", "group", "lead"), CASES)
def test_per_oc_op_matches_the_qdq_matmul(built, k, n, group, lead, threads) -> None:
    a, packed, scales, qdq = _problem(k, n, group, lead)
    ref = reference(a, packed, scales, group, per_oc=True)
    tol = 1e-5 * max(float(np.abs(ref).max(initial=0.0)), 1e-30)
    np.testing.assert_allclose(ref, qdq, rtol=1e-5, atol=tol)
    for level in (None, 0, 4):
        model = _model(k, n, group, level, op_type=OP_TYPE_PER_OC, B=packed, S=scales)
        (y,) = _session(model, threads).run(None, {"A": a})
        assert y.shape == (*lead, n) and y.dtype == np.float32
        if level == 4 and lead in ((1,), (1, 1)) and group % 64 == 0:  # int8 activations
            snr = 10 * np.log10(np.sum(ref**2) / max(np.sum((y - ref) ** 2), 1e-300))
            assert 35.0 < snr < 80.0, snr  # quantized activations: close, but not exact
        else:
            np.testing.assert_allclose(y, ref, rtol=1e-5, atol=tol)


def test_per_oc_zero_row_and_bad_group(built) -> None:
    a, packed, scales, _ = _problem(128, 32, 64, (1,))
    a[:] = 0.0  # all-zero blocks must not divide by zero in the int8 path
    model = _model(128, 32, 64, 4, op_type=OP_TYPE_PER_OC, B=packed, S=scales)
    (y,) = _session(model, 1).run(None, {"A": a})
    assert np.all(y == 0.0)
    with pytest.raises(Exception, match="K % group == 0"):
        _session(_model(100, 32, 64, op_type=OP_TYPE_PER_OC), 1)
    with pytest.raises(Exception, match="input scales must have shape \\[32, 2\\]"):
        _session(_model(128, 32, 64, op_type=OP_TYPE_PER_OC), 1).run(
            None, {"A": a, "B": packed, "S": scales.T.copy()}
        )
