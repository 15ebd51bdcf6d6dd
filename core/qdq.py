"""Dynamic symmetric per-row quantization: the bit widths and the numpy reference semantics.

For ``x [..., C]`` and ``qmax = 2^(bits−1) − 1``::

    scale = max(max_c |x[..., c]| / qmax, 1e-12)          # one scale per row (token / head·token)
    q     = saturate(round_half_to_even(x / scale))        # int8 in [-128, 127] or int4 in [-8, 7]
    y     = q · scale

``smoothrot.passes._qdq.dynamic_qdq`` writes it as ONNX nodes; TensorRT plugins and kernels
must reproduce :func:`dynamic_qdq_reference`.
"""

from __future__ import annotations

import enum

import numpy as np
import onnx_ir as ir

__all__ = ["TINY_SCALE", "QuantBits", "dynamic_qdq_reference"]

TINY_SCALE = np.float32(1e-12)


class QuantBits(enum.Enum):
    INT8 = 8
    INT4 = 4

    @property
    def qmax(self) -> int:
        return 2 ** (self.value - 1) - 1

    @property
    def onnx_type(self) -> ir.DataType:
        return ir.DataType.INT8 if self is QuantBits.INT8 else ir.DataType.INT4


def dynamic_qdq_reference(x: np.ndarray, bits: QuantBits) -> np.ndarray:
    """numpy reference of the dynamic QDQ (float32, round half to even)."""
    x = np.asarray(x, np.float32)
    scale = np.maximum(np.abs(x).max(axis=-1, keepdims=True) / np.float32(bits.qmax), TINY_SCALE)
    q = np.clip(np.rint(x / scale), -bits.qmax - 1, bits.qmax)
    return (q * scale).astype(np.float32)
