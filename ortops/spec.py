"""The ops of smoothrot's ONNX Runtime custom-op library: names, weight packing and numpy
references (what the C++ kernels must compute). Importing this builds nothing.

ONNX Runtime's ``com.microsoft::MatMulNBits`` only knows scales grouped along K (one scale per
output channel and block of K, "per-OC"). Smoothing/rotation recipes here quantize with one
scale per input channel ``k`` and group of ``group`` output channels, which MatMulNBits cannot
express; the plain QDQ graph (DequantizeLinear + MatMul) works but materializes fp32 weights.
``smoothrot.ort::MatMulInt4PerIC`` computes it directly from packed nibbles:

    Y[..., n] = sum_k A[..., k] * scales[n // group, k] * (nibble(B[n], k) - 8)

Inputs: ``A`` float32 ``[..., K]``, ``B`` uint8 ``[N, ceil(K/2)]`` (row n = output channel n,
byte j: low nibble k = 2j, high nibble k = 2j + 1, nibble = q + 8), ``scales`` float32
``[N/group, K]``. Int attributes ``K``, ``N``, ``group`` and optional ``accuracy_level``
(0: fp32 activations, exact up to fp32 rounding; 4: int8 activations per block of 32 k, like
MatMulNBits).

``smoothrot.ort::MatMulInt4PerOC`` is the same op with MatMulNBits' grouping, ``scales [N,
K/group]`` (``group`` a multiple of 16 dividing K): ``Y[..., n] = sum_k A[..., k] ·
scales[n, k // group] · (nibble(B[n], k) − 8)``, same ``B``. At level 4 with one row of A and
``group % 64 == 0`` it runs the int8 kernel with the group scales applied per group of 64-k
pairs; otherwise it dequantizes panels of 16 output channels (fp32).

``smoothrot.ort::KroneckerRotation(X, A)`` is an online Hadamard rotation in one node: ``y = x ·
(A ⊗ H_p / √p)`` for every row ``x`` of ``X [..., n]``, with ``A`` float32 ``[m, m]``, ``p = n /
m`` a power of two and ``H_p`` the Sylvester Hadamard matrix (a fast Walsh–Hadamard transform
inside), the same values as the four-node Reshape/MatMul/MatMul/Reshape form.

``smoothrot.ort::GroupedAttention(Q, K, V, mask; scale, masked_value)`` is the exporter's
``scaled_dot_product_attention`` with grouped K/V heads in one node, reading the present cache
``K, V [B, KV, T, D]`` in place instead of repeating it to ``H`` heads: for ``Q [B, H, S, D]``
and a bool ``mask [B|1, H|1, S, T]``, ``softmax(scale · Q·Kᵀ + (mask ? 0 : masked_value)) · V``
with head ``h`` reading K/V head ``h // (H / KV)``, and rows whose softmax is NaN set to 0.
"""

from __future__ import annotations

import numpy as np

from smoothrot.core.hadamard import hadamard

__all__ = [
    "DOMAIN",
    "OP_TYPE_ATTENTION",
    "OP_TYPE_PER_IC",
    "OP_TYPE_PER_OC",
    "OP_TYPE_ROTATION",
    "pack_per_ic",
    "reference",
    "reference_attention",
    "reference_rotation",
]

DOMAIN = "smoothrot.ort"
OP_TYPE_PER_IC = "MatMulInt4PerIC"
OP_TYPE_PER_OC = "MatMulInt4PerOC"
OP_TYPE_ROTATION = "KroneckerRotation"
OP_TYPE_ATTENTION = "GroupedAttention"


def pack_per_ic(q: np.ndarray) -> np.ndarray:
    """int ``[K, N]`` in [-8, 7] (the QDQ weight layout) -> uint8 ``[N, ceil(K/2)]`` nibbles."""
    q = np.asarray(q)
    if q.ndim != 2:
        raise ValueError(f"pack_per_ic expects a 2-D [K, N] array, got shape {q.shape}")
    if q.size and (q.min() < -8 or q.max() > 7):
        raise ValueError(f"int4 values must lie in [-8, 7], got [{q.min()}, {q.max()}]")
    k, n = q.shape
    nib = np.full((n, k + (k % 2)), 8, dtype=np.uint8)
    nib[:, :k] = (q.T.astype(np.int16) + 8).astype(np.uint8)
    return np.ascontiguousarray(nib[:, 0::2] | (nib[:, 1::2] << 4))


def reference(
    a: np.ndarray, packed: np.ndarray, scales: np.ndarray, group: int, per_oc: bool = False
) -> np.ndarray:
    """float64 numpy reference of MatMulInt4PerIC (``per_oc``: MatMulInt4PerOC), returned as
    float32 ``[..., N]``."""
    a = np.asarray(a, dtype=np.float64)
    k = a.shape[-1]
    packed = np.asarray(packed, dtype=np.uint8)
    nib = np.stack([packed & 0xF, packed >> 4], axis=-1).reshape(packed.shape[0], -1)[:, :k]
    scale = np.repeat(np.asarray(scales, dtype=np.float64), group, axis=1 if per_oc else 0)
    w = (nib.astype(np.float64) - 8.0) * scale  # [N, K]
    return (a @ w.T).astype(np.float32)


def reference_rotation(x: np.ndarray, a: np.ndarray) -> np.ndarray:
    """float64 numpy reference of KroneckerRotation, returned as float32 ``[..., n]``."""
    x = np.asarray(x, dtype=np.float64)
    a = np.asarray(a, dtype=np.float64)
    p = x.shape[-1] // a.shape[0]
    h = hadamard(p)
    if h is None or p & (p - 1):
        raise ValueError(f"n / m = {p} is not a power of two")
    return (x @ np.kron(a, h / np.sqrt(p))).astype(np.float32)


def reference_attention(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray, scale: float, masked: float
) -> np.ndarray:
    """float64 numpy reference of GroupedAttention, returned as float32 ``[B, H, S, D]``."""
    rep = q.shape[1] // k.shape[1]
    k64 = np.repeat(np.asarray(k, np.float64), rep, axis=1)
    v64 = np.repeat(np.asarray(v, np.float64), rep, axis=1)
    scores = scale * np.asarray(q, np.float64) @ k64.swapaxes(-1, -2)
    scores = scores + np.where(mask, 0.0, masked)
    with np.errstate(invalid="ignore", over="ignore"):
        e = np.exp(scores - scores.max(axis=-1, keepdims=True))
        p = np.nan_to_num(e / e.sum(axis=-1, keepdims=True), nan=0.0)
    return (p @ v64).astype(np.float32)
