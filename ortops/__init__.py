"""ONNX Runtime custom ops (C++) used by smoothrot's ORT lowering; see :mod:`.library`.

The names are re-exported lazily so that ``python -m smoothrot.ortops.library`` does not import
the module twice.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from smoothrot.ortops.library import (
        CXXFLAGS,
        DOMAIN,
        OP_TYPE,
        OrtOpsUnavailable,
        available,
        cache_dir,
        library_path,
        main,
        pack_per_ic,
        reference,
        register,
    )

__all__ = [
    "CXXFLAGS",
    "DOMAIN",
    "OP_TYPE",
    "OrtOpsUnavailable",
    "available",
    "cache_dir",
    "library_path",
    "main",
    "pack_per_ic",
    "reference",
    "register",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("smoothrot.ortops.library"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
