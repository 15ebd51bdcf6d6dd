"""Which runner executes a model directory: ONNX Runtime (CPU) or TensorRT (GPU)."""

from __future__ import annotations

from pathlib import Path

from smoothrot.compiler.config import Backend
from smoothrot.compiler.runtime.ort_runner import EXACT_ACCURACY_LEVEL, OrtDecoder

__all__ = ["open_decoder"]


def open_decoder(
    directory: str | Path,
    backend: Backend = Backend.ORT,
    threads: int = 0,
    accuracy_level: int = EXACT_ACCURACY_LEVEL,
    kv_prefix: int | None = None,
):  # noqa: ANN201 - OrtDecoder or TrtDecoder (same forward / generate / empty_cache)
    if backend is Backend.ORT:
        return OrtDecoder(directory, threads, accuracy_level, kv_prefix)
    if kv_prefix is not None:
        raise ValueError("--kv-prefix is fixed when the engine is built; it is an ORT option")
    from smoothrot.compiler.runtime.trt_runner import TrtDecoder

    return TrtDecoder(directory)
