"""INT4 weights packed two per byte, the layout our GEMM kernels read.

Layout: ``B [K, N]`` stays row-major (K rows, N contiguous) and each row packs pairs of
neighbouring columns into one byte::

    packed[k, j] = (q[k, 2j] & 0xF) | (q[k, 2j + 1] << 4)        # int8 [K, N/2]

so column ``2j`` sits in the **low** nibble and ``2j + 1`` in the **high** nibble, each a two's
complement 4-bit value in [-8, 7]. These are exactly the bytes ONNX stores for a row-major INT4
initializer ``[K, N]`` (element ``i`` of the flattened tensor in the low nibble of byte ``i // 2``;
with N even a byte never straddles two rows), so a TensorRT plugin can take the initializer's raw
bytes as its INT8 weight tensor. Keeping N contiguous lets one load fetch the weights of a whole
column tile for one row of K, and a per-IC scale tile (one value per row) stays a plain vector.
"""

from __future__ import annotations

import numpy as np

from smoothrot.core.int4 import QMAX, QMIN

__all__ = ["pack_int4", "unpack_int4"]


def pack_int4(q: np.ndarray) -> np.ndarray:
    """``q`` int8 ``[K, N]`` with values in [-8, 7], N even → packed int8 ``[K, N/2]``."""
    q = np.asarray(q)
    if q.ndim != 2:
        raise ValueError(f"expected a [K, N] weight, got shape {q.shape}")
    if q.shape[1] % 2:
        raise ValueError(f"N must be even to pack two INT4 values per byte, got N={q.shape[1]}")
    if q.size and (q.min() < QMIN or q.max() > QMAX):
        raise ValueError(f"INT4 values must lie in [{QMIN}, {QMAX}]")
    nibbles = q.astype(np.uint8) & np.uint8(0x0F)
    packed = nibbles[:, 0::2] | (nibbles[:, 1::2] << np.uint8(4))
    return packed.view(np.int8)


def unpack_int4(packed: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pack_int4`: int8 ``[K, N/2]`` → int8 ``[K, N]`` in [-8, 7]."""
    packed = np.asarray(packed)
    if packed.ndim != 2 or packed.dtype not in (np.int8, np.uint8):
        raise ValueError(f"expected packed int8 [K, N/2], got {packed.dtype} {packed.shape}")
    as_signed = packed.view(np.int8)
    low = (as_signed << 4).astype(np.int8) >> 4  # arithmetic shift sign-extends the nibble
    high = as_signed >> 4
    q = np.empty((packed.shape[0], packed.shape[1] * 2), np.int8)
    q[:, 0::2], q[:, 1::2] = low, high
    return q
