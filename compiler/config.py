"""Frozen, validated configs for the compile steps (one dataclass per step)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["DType", "EvalConfig", "ExportConfig", "MIN_OPSET"]

MIN_OPSET = 21  # INT4 and blocked DequantizeLinear need opset 21


class DType(enum.Enum):
    FP32 = "fp32"
    FP16 = "fp16"

    @property
    def torch(self):  # noqa: ANN201 - torch is imported lazily
        import torch

        return {DType.FP32: torch.float32, DType.FP16: torch.float16}[self]

    @property
    def numpy(self):  # noqa: ANN201
        import numpy as np

        return {DType.FP32: np.float32, DType.FP16: np.float16}[self]


@dataclass(frozen=True)
class ExportConfig:
    dtype: DType = DType.FP32
    opset: int = MIN_OPSET

    def __post_init__(self) -> None:
        if not isinstance(self.dtype, DType):
            raise ValueError(f"dtype must be a DType, got {self.dtype!r}")
        if self.opset < MIN_OPSET:
            raise ValueError(f"opset must be >= {MIN_OPSET}, got {self.opset}")


@dataclass(frozen=True)
class EvalConfig:
    """Perplexity protocol: non-overlapping windows of ``seq`` tokens from the start of the text."""

    seq: int = 512
    windows: int = 8

    def __post_init__(self) -> None:
        if self.seq < 2:
            raise ValueError(f"seq must be >= 2, got {self.seq}")
        if self.windows < 1:
            raise ValueError(f"windows must be >= 1, got {self.windows}")
