"""Triton W4A8 GEMM: per-token INT8 activation quantization fused into the INT4 GEMM.

Computes what the QDQ graph computes (``core/qdq.py`` on ``X``, then
``MatMul(·, DequantizeLinear(B))``)::

    s_x = max(max_k |x[m, k]| / 127, 1e-12)               # one scale per token (row)
    xq  = clip(round_half_even(x / s_x), -128, 127)
    y   = s_x · Σ_k xq[m, k] · q[k, n] · s_w[k, n]

Each program first reduces its rows' absmax over all of K (the row is small and L2-resident), so
quantization needs no extra launch and no INT8 copy of ``X``; ``x / s_x`` is an IEEE division
and rounding is half-to-even, so ``xq`` equals the reference's bit for bit. ``xq`` and ``q`` are
integers held exactly in fp16 / float32: the prefill kernel's per-OC fp16 ``tl.dot`` sums them
exactly (|Σ| < 2^24 for groups up to 16384) and scales each group's sum. Elsewhere scales enter
the products (decode: ``x · (q · s_w)`` per-OC, ``(xq · s_w) · q`` per-IC, float32; prefill
per-IC: a 3-pass TF32 dot, ≈ float32), so results differ from the float32 reference only by
float32 rounding (tests: relative error < 2e-5 with a float32 output).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from smoothrot.core.int4 import Grouping
from smoothrot.plugins.gemm_config import (
    DecodeConfig,
    PrefillConfig,
)
from smoothrot.plugins.int4_gemm import (
    decode_accumulate,
    launch_gemm,
    prefill_accumulate,
    store_split_k,
    tile_coordinates,
)

__all__ = ["w4a8_gemm"]


@triton.jit
def token_scales(x_ptr, offs_m, M, K, stride_xm, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """Per-row ``max(absmax / 127, 1e-12)`` over all K, float32 ``[BLOCK_M]``."""
    amax = tl.zeros([BLOCK_M, BLOCK_K], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask = (offs_m < M)[:, None] & (offs_k < K)[None, :]
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :], mask=mask, other=0.0)
        amax = tl.maximum(amax, tl.abs(x.to(tl.float32)))
    row_max = tl.max(amax, axis=1)
    return tl.maximum(tl.math.div_rn(row_max, tl.full([BLOCK_M], 127.0, tl.float32)), 1e-12)


@triton.jit
def row_scale(x_row, K, BLOCK: tl.constexpr):
    """``max(absmax / 127, 1e-12)`` of one row of K values, a float32 scalar."""
    amax = tl.zeros([BLOCK], tl.float32)
    for k0 in range(0, K, BLOCK):
        offs_k = k0 + tl.arange(0, BLOCK)
        amax = tl.maximum(amax, tl.abs(tl.load(x_row + offs_k, mask=offs_k < K, other=0.0)))
    return tl.maximum(tl.math.div_rn(tl.max(amax, axis=0), 127.0), 1e-12)


@triton.jit
def w4a8_decode_kernel(
    x_ptr, w_ptr, s_ptr, y_ptr, ws_ptr, count_ptr, M, N, K, n_packed,
    stride_xm, stride_wk, stride_sk, stride_sn, stride_ym, group, k_per_split,
    PER_IC: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_NB: tl.constexpr, SPLIT_K: tl.constexpr,
    ACC_2D: tl.constexpr,
):  # fmt: skip
    pid_m, pid_n, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_b = pid_n * BLOCK_NB + tl.arange(0, BLOCK_NB)
    mask_b = offs_b < n_packed
    x_row = x_ptr + pid_m * stride_xm
    s_x = row_scale(x_row, K, 1024)
    k_start = pid_k * k_per_split
    k_end = tl.minimum(K, k_start + k_per_split)
    acc_even, acc_odd = decode_accumulate(
        x_row, w_ptr, s_ptr, offs_b, mask_b, pid_n * 2 * BLOCK_NB, k_start, k_end, group,
        stride_wk, stride_sk, stride_sn, s_x, PER_IC, True, BLOCK_K, BLOCK_NB, ACC_2D,
    )  # fmt: skip
    store_split_k(
        acc_even, acc_odd, s_x, y_ptr + pid_m * stride_ym, ws_ptr, count_ptr, offs_b, mask_b,
        pid_m, pid_n, pid_k, tl.num_programs(1), M, N, SPLIT_K,
    )  # fmt: skip


@triton.jit
def w4a8_prefill_kernel(
    x_ptr, w_ptr, s_ptr, y_ptr, M, N, K, n_packed, stride_xm, stride_wk, stride_sk, stride_sn,
    stride_ym, group, PER_IC: tl.constexpr, DOT_FP32: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    pid_m, pid_n = tile_coordinates(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    s_x = token_scales(x_ptr, offs_m, M, K, stride_xm, BLOCK_M, BLOCK_K)
    acc = prefill_accumulate(
        x_ptr, w_ptr, s_ptr, offs_m, pid_n * BLOCK_N, M, N, K, n_packed, stride_xm, stride_wk,
        stride_sk, stride_sn, group, s_x, PER_IC, True, DOT_FP32, BLOCK_M, BLOCK_N, BLOCK_K,
    )  # fmt: skip
    y = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :]
    mask = (offs_m < M)[:, None] & (offs_n < N)[None, :]
    tl.store(y, (acc * s_x[:, None]).to(y_ptr.dtype.element_ty), mask=mask)


def w4a8_gemm(
    x: torch.Tensor,
    packed: torch.Tensor,
    scale: torch.Tensor,
    grouping: Grouping,
    block: int,
    out_dtype: torch.dtype | None = None,
    config: DecodeConfig | PrefillConfig | None = None,
) -> torch.Tensor:
    """``int8_qdq(x [..., K]) @ dequantize(packed [K, N/2], scale)``; decode kernel for M <= 4."""
    kernels = (w4a8_decode_kernel, w4a8_prefill_kernel)
    per_ic = grouping is Grouping.PER_IC
    return launch_gemm(kernels, per_ic, x, packed, scale, grouping, block, out_dtype, config)
