"""smoothrot.ort::MatMulInt4PerIC: packing, the compiled op in ONNX Runtime, build caching."""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from smoothrot.ortops.library import OrtOpsUnavailable, available, library_path, register
from smoothrot.ortops.spec import DOMAIN, OP_TYPE_PER_IC, pack_per_ic, reference


def _model(
    k: int, n: int, group: int, level: int | None = None, op_type: str = OP_TYPE_PER_IC, **const
):
    attrs = {"K": k, "N": n, "group": group}
    if level is not None:
        attrs["accuracy_level"] = level
    node = helper.make_node(op_type, ["A", "B", "S"], ["Y"], domain=DOMAIN, **attrs)
    inputs = [helper.make_tensor_value_info("A", TensorProto.FLOAT, None)]
    inits = [numpy_helper.from_array(v, name) for name, v in const.items()]
    if "B" not in const:
        inputs.append(helper.make_tensor_value_info("B", TensorProto.UINT8, None))
    if "S" not in const:
        inputs.append(helper.make_tensor_value_info("S", TensorProto.FLOAT, None))
    graph = helper.make_graph(
        [node], "g", inputs, [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], inits
    )
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid(DOMAIN, 1)]
    return helper.make_model(graph, opset_imports=opsets)


def _session(model, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    assert register(options, build=True)
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def _problem(k: int, n: int, group: int, lead: tuple[int, ...], seed: int = 0):
    rng = np.random.default_rng(seed)
    q = rng.integers(-8, 8, size=(k, n))
    scale = (rng.random((k, n // group)) * 0.02 + 0.001).astype(np.float32)  # QDQ layout
    a = rng.standard_normal((*lead, k)).astype(np.float32)
    return a, q, scale


def test_pack_layout_hand_checked() -> None:
    q = np.array([[-8, 7], [0, 1], [3, -1]])  # K = 3 (odd), N = 2
    packed = pack_per_ic(q)
    assert packed.dtype == np.uint8 and packed.shape == (2, 2)
    # column 0: nibbles 0, 8, 11, pad 8 -> bytes 0x80, 0x8B; column 1: 15, 9, 7, pad 8
    np.testing.assert_array_equal(packed, [[0x80, 0x8B], [0x9F, 0x87]])
    even = pack_per_ic(np.array([[1], [-2]]))
    np.testing.assert_array_equal(even, [[0x69]])


def test_pack_range_error() -> None:
    with pytest.raises(ValueError, match="-8, 7"):
        pack_per_ic(np.array([[8]]))
    with pytest.raises(ValueError, match="-8, 7"):
        pack_per_ic(np.array([[-9, 0]]))


def test_reference_matches_dequantized_matmul() -> None:
    a, q, scale = _problem(37, 64, 16, (5,))
    want = a.astype(np.float64) @ (q * np.repeat(scale.astype(np.float64), 16, axis=1))
    got = reference(a, pack_per_ic(q), scale.T, 16)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())


CASES = [
    # (K, N, group, leading dims of A)
    (37, 64, 16, (1,)),
    (64, 96, 32, (3,)),
    (200, 64, 32, (17,)),
    (37, 96, 16, (2, 3)),
    (200, 96, 32, (0,)),
    (64, 64, 64, (1, 1)),
    (1000, 128, 32, (2, 5, 2)),
    (129, 45, 15, (2,)),  # rows not a multiple of 4, K with a 1-nibble tail
    (37, 45, 15, (5,)),
    (129, 45, 15, (1,)),
    (1000, 96, 32, (1, 1, 1)),
]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(("k", "n", "group", "lead"), CASES)
def test_op_fp32_level(built, k: int, n: int, group: int, lead, threads: int) -> None:
    a, q, scale = _problem(k, n, group, lead)
    packed, scales = pack_per_ic(q), np.ascontiguousarray(scale.T)
    for level in (None, 0):
        sess = _session(_model(k, n, group, level, B=packed, S=scales), threads)
        (y,) = sess.run(None, {"A": a})
        assert y.shape == (*lead, n) and y.dtype == np.float32
        ref = reference(a, packed, scales, group)
        qdq = a.astype(np.float64) @ (q * np.repeat(scale.astype(np.float64), group, axis=1))
        tol = 1e-5 * max(float(np.abs(ref).max(initial=0.0)), 1e-30)
        np.testing.assert_allclose(y, ref, rtol=1e-5, atol=tol)
        np.testing.assert_allclose(y, qdq, rtol=1e-5, atol=tol)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(("k", "n", "group", "lead"), CASES)
def test_op_int8_level(built, k: int, n: int, group: int, lead, threads: int) -> None:
    a, q, scale = _problem(k, n, group, lead, seed=1)
    packed, scales = pack_per_ic(q), np.ascontiguousarray(scale.T)
    sess = _session(_model(k, n, group, 4, B=packed, S=scales), threads)
    (y,) = sess.run(None, {"A": a})
    ref = reference(a, packed, scales, group).astype(np.float64)
    assert y.shape == ref.shape
    if ref.size:
        snr = 10 * np.log10(np.sum(ref**2) / max(np.sum((y - ref) ** 2), 1e-300))
        assert snr > 35.0, snr


def test_op_zero_activation_rows(built) -> None:
    a, q, scale = _problem(200, 64, 32, (3,))
    a[1] = 0.0  # an all-zero block must not divide by zero in the int8 path
    packed, scales = pack_per_ic(q), np.ascontiguousarray(scale.T)
    for level in (0, 4):
        (y,) = _session(_model(200, 64, 32, level, B=packed, S=scales), 1).run(None, {"A": a})
        assert np.all(np.isfinite(y)) and np.all(y[1] == 0.0)


@pytest.mark.parametrize(
    ("a_shape", "b_shape", "s_shape"),
    [
        ((2, 36), (64, 19), (4, 37)),  # A's last dim != K
        ((2, 37), (64, 18), (4, 37)),  # B not [N, ceil(K/2)]
        ((2, 37), (64, 19), (2, 37)),  # scales not [N/group, K]
        ((37,), (64, 19), (4, 38)),
    ],
)
def test_shape_mismatch_is_a_runtime_error(built, a_shape, b_shape, s_shape) -> None:
    sess = _session(_model(37, 64, 16), 1)
    feed = {
        "A": np.zeros(a_shape, np.float32),
        "B": np.zeros(b_shape, np.uint8),
        "S": np.zeros(s_shape, np.float32),
    }
    with pytest.raises(Exception, match=OP_TYPE_PER_IC):
        sess.run(None, feed)
    # the session is still usable afterwards
    feed = {"A": np.ones((2, 37), np.float32), "B": np.full((64, 19), 0x88, np.uint8)}
    (y,) = sess.run(None, {**feed, "S": np.ones((4, 37), np.float32)})
    np.testing.assert_array_equal(y, np.zeros((2, 64), np.float32))


def test_bad_attributes_fail_at_session_creation(built) -> None:
    with pytest.raises(Exception, match="group"):
        _session(_model(37, 60, 16), 1)


def test_library_path_without_build_in_empty_cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SMOOTHROT_ORTOPS_DIR", str(tmp_path))
    with pytest.raises(OrtOpsUnavailable):
        library_path(build=False)
    assert not available()
    assert not register(ort.SessionOptions())


def test_build_is_cached(built) -> None:
    first = library_path(build=True)
    mtime = os.stat(first).st_mtime_ns
    assert available()
    assert library_path(build=True) == first == library_path(build=False)
    assert os.stat(first).st_mtime_ns == mtime
