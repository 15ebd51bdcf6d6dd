"""One import shim for TensorRT (servers, Jetson) and TensorRT-RTX (RTX-class GPUs).

Both expose the same Python API for what we use (``Builder``, strongly typed networks,
``OnnxParser``, optimization profiles, ``Runtime``). TensorRT-RTX's PyPI bindings import as
``tensorrt_rtx_bindings``; NVIDIA's own TensorRT-RTX wheel as ``tensorrt_rtx``. TensorRT-RTX
builds engines without a GPU (ahead of time, for the compute capabilities it is told); TensorRT
builds for the GPU it runs on.
"""

from __future__ import annotations

import enum
import importlib
import logging
from types import ModuleType
from typing import Any

from smoothrot.core.errors import SmoothrotError

__all__ = ["ENGINE_FILE", "TrtBackend", "import_trt_module", "load_trt", "trt_logger"]

ENGINE_FILE = "engine.trt"  # in a `smoothrot build` directory


class TrtBackend(enum.Enum):
    TENSORRT = "tensorrt"
    TENSORRT_RTX = "tensorrt-rtx"

    @property
    def modules(self) -> tuple[str, ...]:
        if self is TrtBackend.TENSORRT:
            return ("tensorrt",)
        return ("tensorrt_rtx_bindings", "tensorrt_rtx")

    @property
    def install_hint(self) -> str:
        if self is TrtBackend.TENSORRT:
            return "install TensorRT >= 10.9 from NVIDIA (pip install 'smoothrot[tensorrt]')"
        return (
            "pip install --no-deps tensorrt-rtx-cu12-libs tensorrt-rtx-cu12-bindings "
            "(the 'tensorrt-rtx' extra)"
        )


def import_trt_module(name: str) -> ModuleType | None:
    """The module ``name`` if it imports *and* has TensorRT's API, else None."""
    try:
        module = importlib.import_module(name)
        module.Builder  # noqa: B018 - the PyPI stubs of TensorRT import but have no API
    except Exception:  # noqa: BLE001 - a broken install raises anything from OSError up
        return None
    return module


def load_trt(backend: TrtBackend | None = None) -> tuple[TrtBackend, ModuleType]:
    """The requested backend's module, or the first importable one (TensorRT first)."""
    for candidate in [backend] if backend is not None else list(TrtBackend):
        for name in candidate.modules:
            module = import_trt_module(name)
            if module is not None:
                return candidate, module
    if backend is not None:
        raise SmoothrotError(f"{backend.value} is not importable: {backend.install_hint}")
    raise SmoothrotError(
        "neither TensorRT nor TensorRT-RTX is importable: "
        + "; or ".join(b.install_hint for b in TrtBackend)
    )


_LOGGERS: dict[str, Any] = {}  # TensorRT keeps the first logger it sees: one per module


def trt_logger(trt: ModuleType) -> Any:
    """A TensorRT logger that speaks through ``logging`` (``smoothrot.tensorrt``): errors as
    warnings, the rest at debug level. Without a GPU, TensorRT-RTX reports "Error reading CUDA
    GPU properties" while checking an engine; that is expected on a build machine, so debug."""
    if trt.__name__ in _LOGGERS:
        return _LOGGERS[trt.__name__]
    log = logging.getLogger("smoothrot.tensorrt")
    errors = {trt.Logger.INTERNAL_ERROR, trt.Logger.ERROR}

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: Any, msg: str) -> None:
            expected = "GPU properties" in msg
            log.log(logging.WARNING if severity in errors and not expected else logging.DEBUG, msg)

    return _LOGGERS.setdefault(trt.__name__, _Logger())
