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

The output error comes for free: with ``E`` the rows ``(b_k − Q(b_k)) / U[k, k]``, ``ΔB = UᵀE``
and ``U H_d Uᵀ = I``, so ``tr(ΔBᵀ H_d ΔB) = ‖E‖²`` for the damped ``H_d = H + λI`` (dead
channels: 1 on the diagonal), and ``tr(ΔBᵀ H ΔB) = ‖E‖² − λ‖ΔB‖²`` (``undamped_error``).
"""

from __future__ import annotations

import numpy as np

from smoothrot.core.int4 import (
    QMAX,
    QMIN,
    Grouping,
    QuantizedWeight,
    group_absmax,
    group_scales,
    quantize_rows,
)

__all__ = ["damping", "gptq", "inverse_cholesky", "undamped_error"]

_BLOCK_ROWS = 128
_SUB_ROWS = 16


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


def _cholesky32(h: np.ndarray) -> np.ndarray:
    """Lower Cholesky factor of a float32 matrix by PyTorch's LAPACK (3× numpy's at 8192)."""
    import torch

    low = torch.linalg.cholesky(torch.from_numpy(h))
    return low.numpy()


def damping(hessian: np.ndarray, damp: float) -> tuple[float, np.ndarray]:
    """``λ = damp · mean(diag H)`` (dead channels counted as 1) and the dead-channel mask."""
    diag = np.diag(hessian)
    dead = diag <= 0
    return damp * float(np.mean(np.where(dead, 1.0, diag), dtype=np.float64)), dead


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
        lam, dead = damping(hessian, damp)
        h = np.ascontiguousarray(np.asarray(hessian, np.float32)[::-1, ::-1])
        flipped = dead[::-1]
        h[flipped, flipped] = 1.0
        h[np.diag_indices_from(h)] += np.float32(lam)
        low = _cholesky32(h)
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


def undamped_error(
    qw: QuantizedWeight, b: np.ndarray, damped: np.ndarray, lam: float, dead: np.ndarray
) -> float:
    """``tr(ΔBᵀ H ΔB)`` from GPTQ's per-column damped error (see the module docstring)."""
    delta = qw.dequantize() - np.asarray(b, np.float32)
    delta[dead] = 0.0
    return float(damped.sum()) - lam * float(np.einsum("kn,kn->", delta, delta, dtype=np.float64))


def gptq(
    b: np.ndarray,
    hessian: np.ndarray,
    grouping: Grouping,
    block: int,
    clip: np.ndarray | float = 1.0,
    damp: float = 0.01,
    factor: tuple[np.ndarray, np.ndarray] | None = None,
    *,
    errors: np.ndarray | None = None,
) -> QuantizedWeight:
    """Quantize ``b`` with GPTQ; ``clip`` is per column (per-OC) or per column group (per-IC).
    ``factor``: :func:`inverse_cholesky` of ``hessian`` with ``damp``, when the caller already
    has it (Linears that share an input, both groupings of one Linear). ``errors`` (float64
    ``[N]``, if given) receives each output column's error ``‖E_n‖²`` under the damped Hessian."""
    if not 0.0 < damp < 1.0:
        raise ValueError(f"damp must be in (0, 1), got {damp}")
    k_dim, n_dim = b.shape
    u, dead = factor if factor is not None else inverse_cholesky(hessian, damp)
    w = np.array(b, u.dtype, copy=True)  # float64, or float32 with a fast factor
    fast = u.dtype == np.float32
    w[dead, :] = 0.0
    clip64 = np.asarray(clip, np.float64)
    q = np.zeros((k_dim, n_dim), np.int8)
    damped = errors if errors is not None else np.empty(n_dim, np.float64)
    damped[:] = 0.0
    if grouping is Grouping.PER_OC:
        scale = np.zeros((k_dim // block, n_dim), np.float32)
        if block == k_dim:  # per channel: the scale comes from the whole, original column
            scale[0] = group_scales(group_absmax(w, grouping, block)[0], clip64)
        rows = block if block > _BLOCK_ROWS or _BLOCK_ROWS % block else _BLOCK_ROWS
        rows = min(rows, k_dim)
    else:
        scale = np.zeros((k_dim, n_dim // block), np.float32)
        rows = _BLOCK_ROWS
    # A fast factor's GPTQ also splits each block into sub-blocks of _SUB_ROWS rows that
    # update the rest of the block by a GEMM, not row by row (same result up to rounding).
    sub = _SUB_ROWS if fast and (grouping is Grouping.PER_IC or block % _SUB_ROWS == 0) else rows
    buf = np.empty(n_dim, np.float32)
    for i1 in range(0, k_dim, rows):
        i2 = min(i1 + rows, k_dim)
        w1 = w[i1:i2].copy()
        err1 = np.zeros_like(w1)
        u1 = u[i1:i2, i1:i2]
        for j1 in range(0, i2 - i1, sub):
            j2 = min(j1 + sub, i2 - i1)
            for i in range(j1, j2):
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
                if fast:  # quantize_rows in place: the same values, fewer temporaries
                    np.divide(w1[i], row_scale, out=buf)
                    np.clip(np.rint(buf, out=buf), QMIN, QMAX, out=buf)
                    q[k] = buf
                    e = np.subtract(w1[i], np.multiply(buf, row_scale, out=buf), out=buf)
                    e /= u1[i, i]
                else:
                    q[k] = quantize_rows(w1[i].astype(np.float32), row_scale)
                    deq = q[k].astype(np.float32) * row_scale
                    e = (w1[i] - deq.astype(w.dtype)) / u1[i, i]
                w1[i + 1 : j2] -= np.outer(u1[i, i + 1 : j2], e)
                err1[i] = e
            if j2 < i2 - i1:
                w1[j2:] -= u1[j1:j2, j2:].T @ err1[j1:j2]
        w[i2:] -= u[i1:i2, i2:].T @ err1
        damped += np.einsum("kn,kn->n", err1, err1, dtype=np.float64)
    return QuantizedWeight(q, scale, grouping, block)
