"""numpy references of the plugin kernels, with exactly the QDQ subgraphs' semantics (float32).

- ``w4a16_matmul``: ``MatMul(X, DequantizeLinear(q, scale, axis, block_size))``;
- ``w4a8_matmul``: the same with ``X`` first through the per-token INT8 dynamic QDQ
  (:func:`smoothrot.passes._qdq.dynamic_qdq`);
- ``kronecker_hadamard``: the online rotation's ``Reshape [..., m, p] → MatMul(·, B) →
  MatMul(Aᵀ, ·) → Reshape [..., n]`` (:mod:`smoothrot.passes.online_rotation`).

The kernels are checked against these, and these against ONNX Runtime running the subgraphs.
"""

from __future__ import annotations

import numpy as np

from smoothrot.core.int4 import Grouping, QuantizedWeight
from smoothrot.core.qdq import QuantBits, dynamic_qdq_reference

__all__ = ["check_int4_operands", "kronecker_hadamard", "w4a8_matmul", "w4a16_matmul"]


def check_int4_operands(
    k: int, n: int, scale_shape: tuple[int, ...], grouping: Grouping, block: int
) -> None:
    """ValueError unless ``scale_shape`` is the blocked-DQ scale of a ``[k, n]`` weight."""
    if block <= 0:
        raise ValueError(f"group size must be positive, got {block}")
    along = k if grouping is Grouping.PER_OC else n
    if along % block:
        raise ValueError(f"group size {block} does not divide {grouping.value} dimension {along}")
    expected = (k // block, n) if grouping is Grouping.PER_OC else (k, n // block)
    if tuple(scale_shape) != expected:
        raise ValueError(
            f"{grouping.value} scale of a [{k}, {n}] weight with group {block} must be "
            f"{list(expected)}, got {list(scale_shape)}"
        )


def w4a16_matmul(
    x: np.ndarray, q: np.ndarray, scale: np.ndarray, grouping: Grouping, block: int
) -> np.ndarray:
    """``x [..., K] @ dequantize(q [K, N], scale)`` in float32."""
    q = np.asarray(q)
    if q.ndim != 2 or x.shape[-1] != q.shape[0]:
        raise ValueError(f"x {x.shape} and weight {q.shape} do not multiply")
    check_int4_operands(q.shape[0], q.shape[1], np.shape(scale), grouping, block)
    weight = QuantizedWeight(q, np.asarray(scale, np.float32), grouping, block).dequantize()
    return np.asarray(x, np.float32) @ weight


def w4a8_matmul(
    x: np.ndarray, q: np.ndarray, scale: np.ndarray, grouping: Grouping, block: int
) -> np.ndarray:
    """Per-token INT8 QDQ of ``x`` (last axis), then :func:`w4a16_matmul`."""
    return w4a16_matmul(dynamic_qdq_reference(x, QuantBits.INT8), q, scale, grouping, block)


def kronecker_hadamard(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``x [..., n] · (A ⊗ B)`` computed as ``Aᵀ · reshape(x, [m, p]) · B`` (``n = m·p``)."""
    m, p = a.shape[0], b.shape[0]
    if a.shape != (m, m) or b.shape != (p, p):
        raise ValueError(f"factors must be square, got {a.shape} and {b.shape}")
    if x.shape[-1] != m * p:
        raise ValueError(f"last axis {x.shape[-1]} != {m}·{p}")
    x32 = np.asarray(x, np.float32)
    blocks = x32.reshape(*x32.shape[:-1], m, p) @ np.asarray(b, np.float32)
    rotated = np.asarray(a, np.float32).T @ blocks
    return rotated.reshape(x32.shape)
