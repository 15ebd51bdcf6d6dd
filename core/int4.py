"""Symmetric INT4 weight quantization of ``B [K, N]`` (numpy reference; the graph stores this).

Conventions (shared/DESIGN.md, "Lossy transforms"):

- values ``q ∈ [-8, 7]``, zero-point 0 (TensorRT needs symmetric), ``B ≈ q · scale``;
- **per-OC** groups run along K inside each output column: ``scale [K/g, N]``, stored as
  ``DequantizeLinear(axis=0, block_size=g)``; **per-IC** groups run along N inside each input row:
  ``scale [K, N/g]``, ``DequantizeLinear(axis=1, block_size=g)``. Group size 0 = per channel
  (one group spans the whole dimension);
- ``scale = clip · max|B_group| / 7``; the clipping ratio is searched per unit whose output
  error is independent of the others (a column for per-OC, a block of ``g`` columns for per-IC),
  minimizing the layer's output error on calibration data ``tr(ΔBᵀ H ΔB)``, ``H = XᵀX``;
- dequantization is ``q.astype(float32) * scale`` (float32), which is what ONNX Runtime's
  DequantizeLinear computes, bit for bit.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

__all__ = [
    "QMAX",
    "QMIN",
    "Grouping",
    "QuantizedWeight",
    "fit_group_size",
    "group_absmax",
    "group_scales",
    "local_hessian",
    "local_output_error",
    "output_error",
    "quantize_rows",
    "quantize_rtn",
    "search_clip",
]

QMIN, QMAX = -8, 7
DEFAULT_CLIP_GRID = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7)
MIN_GROUP = 16


class Grouping(enum.Enum):
    PER_OC = "per-oc"  # groups along K for each output channel (DequantizeLinear axis 0)
    PER_IC = "per-ic"  # groups along N for each input channel (DequantizeLinear axis 1)

    @property
    def axis(self) -> int:
        return 0 if self is Grouping.PER_OC else 1


@dataclass(frozen=True)
class QuantizedWeight:
    q: np.ndarray  # int8 [K, N], values in [-8, 7]
    scale: np.ndarray  # float32, [K/g, N] (per-OC) or [K, N/g] (per-IC)
    grouping: Grouping
    block: int

    def dequantize(self) -> np.ndarray:
        scale = np.repeat(self.scale, self.block, axis=self.grouping.axis)
        return self.q.astype(np.float32) * scale


def fit_group_size(dim: int, requested: int) -> int:
    """The group size used along a dimension of ``dim``: ``requested`` if it divides ``dim``,
    else the largest power-of-two fraction of it that does (>= 16); 0 means per channel."""
    if requested < 0:
        raise ValueError(f"group size must be >= 0 (0 = per channel), got {requested}")
    if requested == 0 or requested >= dim:
        return dim
    g = requested
    while g >= MIN_GROUP and dim % g:
        g //= 2
    if g < MIN_GROUP or dim % g:
        raise ValueError(f"no group size <= {requested} (>= {MIN_GROUP}) divides {dim}")
    return g


def group_absmax(b: np.ndarray, grouping: Grouping, block: int) -> np.ndarray:
    k, n = b.shape
    a = np.abs(b)
    if grouping is Grouping.PER_OC:
        return a.reshape(k // block, block, n).max(axis=1)
    return a.reshape(k, n // block, block).max(axis=2)


def _clip_per_scale(clip: np.ndarray | float, grouping: Grouping, block: int) -> np.ndarray:
    c = np.asarray(clip, np.float64)
    if c.ndim == 0 or grouping is Grouping.PER_OC:
        return c  # [N] broadcasts over the columns of [K/g, N]
    return c[None, :]  # [N/g] broadcasts over [K, N/g]


def group_scales(absmax: np.ndarray, clip: np.ndarray | float) -> np.ndarray:
    """``clip · absmax / 7`` as float32; an all-zero group gets scale 1 (its q is 0 anyway)."""
    scale = (absmax * clip / QMAX).astype(np.float32)
    return np.where(scale > 0, scale, np.float32(1.0))


def quantize_rows(values: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``clip(round(values / scale), -8, 7)`` as int8 (``scale`` already expanded)."""
    return np.clip(np.rint(values / scale), QMIN, QMAX).astype(np.int8)


def quantize_rtn(
    b: np.ndarray, grouping: Grouping, block: int, clip: np.ndarray | float = 1.0
) -> QuantizedWeight:
    """Round-to-nearest with ``scale = clip · max|group| / 7``."""
    b32 = np.asarray(b, np.float32)
    scale = group_scales(group_absmax(b32, grouping, block), _clip_per_scale(clip, grouping, block))
    full = np.repeat(scale, block, axis=grouping.axis)
    return QuantizedWeight(quantize_rows(b32, full), scale, grouping, block)


def output_error(delta: np.ndarray, hessian: np.ndarray | None) -> np.ndarray:
    """Per output column ``Δ_nᵀ H Δ_n`` (the squared output error over the calibration tokens);
    without a Hessian, the plain squared weight error per column. The product ``HΔ`` runs in
    the Hessian's precision when it is float32 (a large layer's: half the GEMM time), else in
    float64; the sum over K is always float64."""
    if hessian is not None and np.asarray(hessian).dtype == np.float32:
        d32 = np.asarray(delta, np.float32)
        return np.einsum("kn,kn->n", hessian @ d32, d32, dtype=np.float64)
    d = np.asarray(delta, np.float64)
    if hessian is None:
        return np.einsum("kn,kn->n", d, d)
    return np.einsum("kn,kn->n", np.asarray(hessian, np.float64) @ d, d)


def local_hessian(hessian: np.ndarray, size: int) -> np.ndarray:
    """The diagonal ``size × size`` blocks of ``hessian [K, K]`` as float32 ``[K/size, size,
    size]``: the interactions inside each run of ``size`` input channels only."""
    k = len(hessian)
    if size < 1 or k % size:
        raise ValueError(f"local block {size} does not divide the Hessian's {k} channels")
    g = k // size
    idx = np.arange(g)
    blocks = np.asarray(hessian).reshape(g, size, g, size)[idx, :, idx, :]
    return np.ascontiguousarray(blocks, np.float32)


def local_output_error(delta: np.ndarray, blocks: np.ndarray) -> np.ndarray:
    """Per output column, ``Δ_nᵀ H Δ_n`` with ``H`` cut to its diagonal ``blocks``
    (:func:`local_hessian`): ``K·size·N`` multiply-adds instead of ``K²·N``."""
    g, size, _ = blocks.shape
    d = np.asarray(delta, np.float32).reshape(g, size, -1)
    return np.einsum("gsn,gsn->n", blocks @ d, d, dtype=np.float64)


def _per_unit(err: np.ndarray, grouping: Grouping, block: int) -> np.ndarray:
    return err if grouping is Grouping.PER_OC else err.reshape(-1, block).sum(axis=1)


def search_clip(
    b: np.ndarray,
    hessian: np.ndarray | None,
    grouping: Grouping,
    block: int,
    grid: tuple[float, ...] = DEFAULT_CLIP_GRID,
    local: int = 0,
) -> np.ndarray:
    """Per clipping unit, the ratio in ``grid`` with the smallest RTN output error. Units are
    independent (``tr(ΔBᵀHΔB)`` splits over columns), so one pass over the grid is exact.
    ``local > 0`` measures the error on ``H``'s diagonal blocks of ``local`` channels (in
    float32): the choice a large Linear can afford, ``K / local`` times cheaper."""
    if not grid or any(not 0.0 < c <= 1.0 for c in grid):
        raise ValueError(f"clip grid values must be in (0, 1], got {grid}")
    if local and hessian is not None:
        blocks = local_hessian(hessian, local)
        b32 = np.asarray(b, np.float32)
        absmax = group_absmax(b32, grouping, block)
        delta = np.empty_like(b32)

        def error(c: float) -> np.ndarray:  # the RTN error in place, in float32
            full = np.repeat(group_scales(absmax, c), block, axis=grouping.axis)
            np.divide(b32, full, out=delta)
            np.clip(np.rint(delta, out=delta), QMIN, QMAX, out=delta)
            np.multiply(delta, full, out=delta)
            np.subtract(delta, b32, out=delta)
            return local_output_error(delta, blocks)
    else:
        b64 = np.asarray(b, np.float64)

        def error(c: float) -> np.ndarray:
            return output_error(quantize_rtn(b, grouping, block, c).dequantize() - b64, hessian)

    best_err, best = None, None
    for c in grid:
        err = _per_unit(error(c), grouping, block)
        if best_err is None:
            best_err, best = err, np.full_like(err, c)
        else:
            better = err < best_err
            best_err, best = np.where(better, err, best_err), np.where(better, c, best)
    assert best is not None
    return best
