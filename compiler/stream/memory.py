"""Memory of a streamed compile: the peak RSS of each stage, and an estimate made before any
work so that a compile that cannot fit refuses with one line instead of being OOM-killed.

Peak RSS is the kernel's ``VmHWM`` of this process (``/proc/self/status``), reset at the start of
each stage by writing ``5`` to ``/proc/self/clear_refs`` (where the kernel allows it; otherwise
the peak so far is reported, which is an upper bound).

The estimate counts what one layer's step holds at once: its fp32 weights three times (the
graph, ONNX Runtime's copy, the pass being applied), the fp64 Hessians of its four MatMul inputs,
GPTQ's working set for the largest input (four ``K × K`` fp64 matrices) and the streams; the
head's step holds the fp32 embedding and lm_head twice. The larger of the two, plus the
interpreter and libraries (~1.5 GB), must fit in ``MemAvailable``.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
from pathlib import Path

from smoothrot.core.errors import SmoothrotError
from smoothrot.core.manifest import ModelDims

__all__ = [
    "available_bytes",
    "check_fits",
    "estimate_bytes",
    "peak_rss_mb",
    "refuse_unless_fits",
    "refuse_unless_model_fits",
    "release_freed_memory",
    "reset_peak_rss",
]

_BASE = int(1.5 * 2**30)
_GB = 2**30


def reset_peak_rss() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def release_freed_memory() -> None:
    """Collect garbage and hand freed heap memory back to the kernel (glibc's ``malloc_trim``):
    without it, the heap keeps each layer's freed buffers and the process grows layer by layer
    (glibc raises its mmap threshold after large frees, so later buffers come from the heap)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return float("nan")


def available_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def estimate_bytes(dims: ModelDims, tied: bool, stream_tokens: int) -> dict[str, int]:
    """Bytes the head's and one layer's step hold at their peaks (see module docstring)."""
    d = dims
    attn, kv = d.heads * d.head_dim, d.kv_heads * d.head_dim
    layer_params = d.hidden * (attn + 2 * kv) + attn * d.hidden + 3 * d.hidden * d.intermediate
    inputs = [d.hidden, attn, d.hidden, d.intermediate]
    hessians = sum(k * k * 8 for k in inputs)
    gptq = 4 * max(inputs) ** 2 * 8
    streams = stream_tokens * d.hidden * 4
    ends = d.vocab * d.hidden * 4 * (1 if tied else 2)
    return {
        "layer": 3 * layer_params * 4 + hessians + gptq + streams + _BASE,
        "head": 2 * ends + streams + _BASE,
    }


def refuse_unless_fits(need: int, what: str) -> int:
    """``need`` (bytes); refuses in one line when it exceeds ``MemAvailable``."""
    have = available_bytes()
    if have is not None and need > have:
        raise SmoothrotError(
            f"{what} needs ~{need / _GB:.1f} GB of memory at its peak, "
            f"{have / _GB:.1f} GB available"
        )
    return need


def check_fits(dims: ModelDims, tied: bool, stream_tokens: int) -> int:
    """The estimated peak in bytes; refuses (one line) when it exceeds the available memory."""
    need = max(estimate_bytes(dims, tied, stream_tokens).values())
    return refuse_unless_fits(
        need, "this compile (one decoder layer and its Hessians, or the embedding and lm_head)"
    )


def refuse_unless_model_fits(size: int, copies: int, what: str) -> int:
    """Refuses (one line) a command that holds ``copies`` of a ``size``-byte model at once,
    beside ~2 GB of libraries, when that exceeds the available memory."""
    detail = f"{copies} × its {size / _GB:.1f} GB model, plus libraries"
    return refuse_unless_fits(copies * size + 2 * _GB, f"{what} ({detail})")
