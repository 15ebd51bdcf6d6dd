"""Triton online Hadamard rotation ``y = x · (A ⊗ B)``, Kronecker-factored, one token per program.

Per token, ``x [n]`` is viewed as ``X [m, p]`` (``n = m·p``, row-major) and ``Y = Aᵀ · X · B`` —
the online rotation's ``Reshape → MatMul(·, B) → MatMul(Aᵀ, ·) → Reshape``
(``passes/online_rotation.py``), ``O(n·(m + p))`` instead of a dense ``n × n`` product. The
factors (``core/hadamard.py``: ``m`` and ``p`` need not be powers of two, and ``A`` may be a
random orthogonal matrix) are read as float32 and both products run as 3-pass TF32 dots, so the
result is float32-accurate for any factors; ``X`` is padded to powers of two >= 16 (``tl.dot``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from smoothrot.plugins.int4_gemm import LAUNCH_OPTIONS

__all__ = ["hadamard_rotate", "padded"]


@triton.jit
def hadamard_kernel(
    x_ptr, a_ptr, b_ptr, y_ptr, m, p, stride_xt, stride_yt,
    M_PAD: tl.constexpr, P_PAD: tl.constexpr,
):  # fmt: skip
    token = tl.program_id(0)
    rows, cols = tl.arange(0, M_PAD), tl.arange(0, P_PAD)
    mask_x = (rows < m)[:, None] & (cols < p)[None, :]
    offs_x = rows[:, None] * p + cols[None, :]
    x = tl.load(x_ptr + token * stride_xt + offs_x, mask=mask_x, other=0.0).to(tl.float32)
    mask_b = (cols < p)[:, None] & (cols < p)[None, :]
    b = tl.load(b_ptr + cols[:, None] * p + cols[None, :], mask=mask_b, other=0.0)
    mask_a = (rows < m)[:, None] & (rows < m)[None, :]
    a_t = tl.load(a_ptr + rows[None, :] * m + rows[:, None], mask=mask_a, other=0.0)  # Aᵀ
    xb = tl.dot(x, b, input_precision="tf32x3")
    y = tl.dot(a_t, xb, input_precision="tf32x3")
    tl.store(y_ptr + token * stride_yt + offs_x, y.to(y_ptr.dtype.element_ty), mask=mask_x)


def padded(size: int) -> int:
    """The power-of-two extent (>= 16, the smallest ``tl.dot`` tile) that holds ``size``."""
    return max(16, triton.next_power_of_2(size))


def hadamard_rotate(
    x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, out_dtype: torch.dtype | None = None
) -> torch.Tensor:
    """``x [..., m·p] · (A ⊗ B)`` for float32 factors ``a [m, m]``, ``b [p, p]``."""
    m, p = a.shape[0], b.shape[0]
    if a.shape != (m, m) or b.shape != (p, p):
        raise ValueError(f"factors must be square, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.dtype != torch.float32 or b.dtype != torch.float32:
        raise ValueError("factors must be float32")
    if x.shape[-1] != m * p:
        raise ValueError(f"last axis {x.shape[-1]} != {m}·{p}")
    if x.dtype not in (torch.float16, torch.float32):
        raise ValueError(f"activations must be fp16 or fp32, got {x.dtype}")
    if max(m, p) > 256:
        raise ValueError(f"factor sizes {m}, {p} exceed 256 (one program holds X and both factors)")
    x2 = x.reshape(-1, m * p)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    y = torch.empty(x2.shape, dtype=out_dtype or x.dtype, device=x.device)
    a, b = a.contiguous(), b.contiguous()
    hadamard_kernel[(x2.shape[0],)](
        x2, a, b, y, m, p, x2.stride(0), y.stride(0), padded(m), padded(p),
        num_warps=8 if max(m, p) > 64 else 4, **LAUNCH_OPTIONS,
    )  # fmt: skip
    return y.reshape(x.shape)
