"""GPTQ for ``B [K, N]`` with per-OC *or* per-IC INT4 groups (numpy, float64).

GPTQ visits the input channels (rows of ``B``) in order, quantizes row ``k`` and spreads its
error over the rows not yet quantized through the inverse Hessian (``H = XᵀX`` of the layer's
input on calibration data, damped by ``damp · mean(diag H)``), using the upper Cholesky factor
``U`` of ``H⁻¹``: ``B[k+1:] -= U[k, k+1:]ᵀ ⊗ (b_k − Q(b_k)) / U[k, k]``. Lazy batch updates
over blocks of rows keep it fast; results equal the row-by-row form up to rounding.

Scales are set when they are first needed, from the *updated* weights:
- per-OC (groups of ``g`` rows inside each column): when row ``k`` starts a group, from rows
  ``k … k+g−1`` as they are at that moment (per channel: from the original ``B``);
- per-IC (groups of ``g`` columns inside each row): when row ``k`` is quantized, from that row.

Each scale is ``clip · max|group| / 7`` with the clipping ratios found by ``search_clip``.
"""

from __future__ import annotations

import numpy as np

from smoothrot.core.int4 import (
    Grouping,
    QuantizedWeight,
    group_absmax,
    group_scales,
    quantize_rows,
)

__all__ = ["gptq", "inverse_cholesky"]

_BLOCK_ROWS = 128


def _lower_inverse(low: np.ndarray) -> np.ndarray:
    """Inverse of a lower-triangular matrix by halves: ``[[A, 0], [C, D]]⁻¹ = [[A⁻¹, 0],
    [-D⁻¹ C A⁻¹, D⁻¹]]``, i.e. ``n³/3`` multiply-adds in GEMMs instead of a dense solve."""
    n = len(low)
    if n <= 256:
        return np.linalg.inv(low)
    h = n // 2
    a_inv, d_inv = _lower_inverse(low[:h, :h]), _lower_inverse(low[h:, h:])
    out = np.zeros_like(low)
    out[:h, :h], out[h:, h:] = a_inv, d_inv
    out[h:, :h] = -(d_inv @ (low[h:, :h] @ a_inv))
    return out


def inverse_cholesky(
    hessian: np.ndarray, damp: float, fast: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Upper Cholesky factor ``U`` of the damped ``H⁻¹`` (``H⁻¹ = UᵀU``) and the mask of dead
    input channels, each intermediate freed as soon as it is used (a 14336-wide Hessian is 1.6
    GB in float64). ``fast``: one Cholesky of the reversed ``JHJ = LLᵀ`` and a triangular
    inverse, ``U = J L⁻¹ J``, all in float32 (a sixth of the work; the reference path: two
    Cholesky factorizations, a dense solve and a product, in float64)."""
    if not 0.0 < damp < 1.0:
        raise ValueError(f"damp must be in (0, 1), got {damp}")
    if fast:  # every step in float32, on the reversed copy only
        h = np.ascontiguousarray(np.asarray(hessian, np.float32)[::-1, ::-1])
        dead = np.diag(h)[::-1] <= 0
        flipped = dead[::-1]
        h[flipped, flipped] = 1.0
        h[np.diag_indices_from(h)] += np.float32(
            damp * float(np.mean(np.diag(h), dtype=np.float64))
        )
        low = np.linalg.cholesky(h)
        del h
        return np.ascontiguousarray(_lower_inverse(low)[::-1, ::-1]), dead
    h = np.array(hessian, np.float64, copy=True)
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0
    h[np.diag_indices_from(h)] += damp * float(np.mean(np.diag(h)))
    low = np.linalg.cholesky(h)
    del h
    eye = np.eye(len(low))
    inv_low = np.linalg.solve(low, eye)
    del low, eye
    h_inv = inv_low.T @ inv_low
    del inv_low
    return np.linalg.cholesky(h_inv).T, dead


def gptq(
    b: np.ndarray,
    hessian: np.ndarray,
    grouping: Grouping,
    block: int,
    clip: np.ndarray | float = 1.0,
    damp: float = 0.01,
    factor: tuple[np.ndarray, np.ndarray] | None = None,
) -> QuantizedWeight:
    """Quantize ``b`` with GPTQ; ``clip`` is per column (per-OC) or per column group (per-IC).
    ``factor``: :func:`inverse_cholesky` of ``hessian`` with ``damp``, when the caller already
    has it (Linears that share an input, both groupings of one Linear)."""
    if not 0.0 < damp < 1.0:
        raise ValueError(f"damp must be in (0, 1), got {damp}")
    k_dim, n_dim = b.shape
    u, dead = factor if factor is not None else inverse_cholesky(hessian, damp)
    w = np.array(b, u.dtype, copy=True)  # float64, or float32 with a fast factor
    w[dead, :] = 0.0
    clip64 = np.asarray(clip, np.float64)
    q = np.zeros((k_dim, n_dim), np.int8)
    if grouping is Grouping.PER_OC:
        scale = np.zeros((k_dim // block, n_dim), np.float32)
        if block == k_dim:  # per channel: the scale comes from the whole, original column
            scale[0] = group_scales(group_absmax(w, grouping, block)[0], clip64)
        rows = block if block > _BLOCK_ROWS or _BLOCK_ROWS % block else _BLOCK_ROWS
        rows = min(rows, k_dim)
    else:
        scale = np.zeros((k_dim, n_dim // block), np.float32)
        rows = _BLOCK_ROWS
    for i1 in range(0, k_dim, rows):
        i2 = min(i1 + rows, k_dim)
        w1 = w[i1:i2].copy()
        err1 = np.zeros_like(w1)
        u1 = u[i1:i2, i1:i2]
        for i in range(i2 - i1):
            k = i1 + i
            if grouping is Grouping.PER_OC:
                if block < k_dim and k % block == 0:
                    g = w1[i : i + block]
                    scale[k // block] = group_scales(np.abs(g).max(axis=0), clip64)
                row_scale = scale[k // block].astype(np.float32)
            else:
                absmax = np.abs(w1[i]).reshape(-1, block).max(axis=1)
                scale[k] = group_scales(absmax, clip64)
                row_scale = np.repeat(scale[k], block)
            row = w1[i].astype(np.float32)
            q[k] = quantize_rows(row, row_scale)
            deq = q[k].astype(np.float32) * row_scale
            e = (w1[i] - deq.astype(w.dtype)) / u1[i, i]
            w1[i + 1 :] -= np.outer(u1[i, i + 1 :], e)
            err1[i] = e
        w[i2:] -= u[i1:i2, i2:].T @ err1
    return QuantizedWeight(q, scale, grouping, block)
