"""Triton W4A16 GEMM ``Y = X · dequantize(B)`` over packed INT4 weights (:mod:`.packing`).

Two kernels, chosen by the number of rows ``M`` of ``X``:

- **decode** (``M <= DECODE_MAX_M``): a split-K GEMV. Program ``(m, n-tile, k-split)`` streams
  ``[BLOCK_K, BLOCK_N/2]`` byte tiles (N contiguous: each thread loads 16 bytes, a warp whole
  rows) and accumulates in fp32, by default in a ``[BLOCK_K, BLOCK_N/2]`` register tile reduced
  over K once at the end (``ACC_2D``), so the loop has no cross-thread traffic. Splitting K gives
  enough programs to fill every SM when ``N / BLOCK_N`` is small; the partial sums go to a
  workspace and the last program of each output tile to arrive (an atomic counter) adds them in
  split order and writes ``Y``: one launch, no memset, deterministic.
- **prefill**: a tiled ``tl.dot`` GEMM; the weight tile is unpacked and interleaved in registers.

Scales: a tile never straddles a scale group, so per-OC ``[K/g, N]`` is one vector over the
tile's columns (it scales the unpacked weights, or the ``tl.dot`` partial of the tile) and
per-IC ``[K, N/g]`` one vector over its rows (folded into ``x`` in the decode kernel, into the
weight tile in the prefill one). Nibbles become float32 without int→float conversions (a quarter
to an eighth of the FMA rate on sm_80–sm_90): ``(nibble ^ 8) | bits(2^23)`` reinterpreted as a
float is ``2^23 + q + 8`` exactly.

``w4a16_gemm`` is the torch-callable wrapper (fp16/fp32 in, fp16/fp32 out); :mod:`.w4a8_gemm`
reuses the jitted helpers. Tile sizes are choices, not measurements: ``tools/bench_kernels.py
--sweep`` times the alternatives on a GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from smoothrot.core.int4 import Grouping
from smoothrot.plugins.gemm_config import (
    DECODE_MAX_M,
    DecodeConfig,
    PrefillConfig,
    check_operands,
    check_tile,
    decode_config,
    num_sms,
    prefill_config,
    split_k_workspace,
)

__all__ = ["LAUNCH_OPTIONS", "launch_gemm", "w4a16_gemm"]
# Launch option: ``acc + x·w`` as one FMA. Named explicitly because Triton's default flips to
# "off" in 3.10; every launch and the PTX build pass it.
LAUNCH_OPTIONS = {"enable_fp_fusion": True}


@triton.jit
def unpack_int4(b):
    """Packed int8 tile → (low, high) nibbles as exact float32 values in [-8, 7]."""
    b32 = b.to(tl.int32)
    low = ((b32 & 0xF) ^ 0x4B000008).to(tl.float32, bitcast=True) - 8388616.0
    high = (((b32 >> 4) & 0xF) ^ 0x4B000008).to(tl.float32, bitcast=True) - 8388616.0
    return low, high


@triton.jit
def quantize_int8(x, scale):
    """``clip(round_half_even(x / scale), -128, 127)`` as float32 (see core/qdq.py)."""
    v = tl.math.div_rn(x, scale)  # IEEE division, as numpy and ONNX Runtime divide
    v = (v + 12582912.0) - 12582912.0  # adding 1.5·2^23 rounds half to even for |v| < 2^22
    return tl.minimum(tl.maximum(v, -128.0), 127.0)


@triton.jit
def decode_accumulate(
    x_row, w_ptr, s_ptr, offs_b, mask_b, n_start, k_start, k_end, group,
    stride_wk, stride_sk, stride_sn, act_scale, PER_IC: tl.constexpr, QUANT_ACT: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_NB: tl.constexpr, ACC_2D: tl.constexpr,
):  # fmt: skip
    """fp32 sums over ``[k_start, k_end)`` for the even and odd columns of one byte tile.

    ``ACC_2D`` keeps a ``[BLOCK_K, BLOCK_NB]`` accumulator and reduces over K once at the end
    (no cross-thread reduction per step); otherwise each step's tile is reduced right away."""
    acc_even = tl.zeros([BLOCK_K, BLOCK_NB] if ACC_2D else [BLOCK_NB], tl.float32)
    acc_odd = tl.zeros([BLOCK_K, BLOCK_NB] if ACC_2D else [BLOCK_NB], tl.float32)
    col_even = 2 * offs_b
    for k0 in range(k_start, k_end, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < k_end
        x = tl.load(x_row + offs_k, mask=mask_k, other=0.0).to(tl.float32)
        if QUANT_ACT:
            x = quantize_int8(x, act_scale)
        tile = w_ptr + offs_k[:, None] * stride_wk + offs_b[None, :]
        b = tl.load(tile, mask=mask_k[:, None] & mask_b[None, :], other=0)
        low, high = unpack_int4(b)
        if PER_IC:  # one scale per row of the tile: fold it into x
            s_col = s_ptr + (n_start // group) * stride_sn
            x = x * tl.load(s_col + offs_k * stride_sk, mask=mask_k, other=0.0)
        else:  # one scale per column of the tile
            s_row = s_ptr + (k0 // group) * stride_sk
            pair = col_even[:, None] + tl.arange(0, 2)[None, :]
            s_pairs = tl.load(s_row + pair * stride_sn, mask=mask_b[:, None], other=0.0)
            s_even, s_odd = tl.split(s_pairs)
        if ACC_2D:
            if PER_IC:
                acc_even += x[:, None] * low
                acc_odd += x[:, None] * high
            else:
                acc_even += x[:, None] * (low * s_even[None, :])
                acc_odd += x[:, None] * (high * s_odd[None, :])
        elif PER_IC:
            acc_even += tl.sum(x[:, None] * low, axis=0)
            acc_odd += tl.sum(x[:, None] * high, axis=0)
        else:
            acc_even += tl.sum(x[:, None] * low, axis=0) * s_even
            acc_odd += tl.sum(x[:, None] * high, axis=0) * s_odd
    if ACC_2D:
        sum_even, sum_odd = tl.sum(acc_even, axis=0), tl.sum(acc_odd, axis=0)
    else:
        sum_even, sum_odd = acc_even, acc_odd
    return sum_even, sum_odd


@triton.jit
def store_split_k(
    acc_even, acc_odd, out_scale, y_row, ws_ptr, count_ptr, offs_b, mask_b,
    pid_m, pid_n, pid_k, num_n_tiles, M, N, SPLIT_K: tl.constexpr,
):  # fmt: skip
    """Write ``out_scale · acc`` to the even/odd columns of ``y_row``, summing the K-splits."""
    col_even = 2 * offs_b
    if SPLIT_K == 1:
        tl.store(y_row + col_even, (acc_even * out_scale).to(y_row.dtype.element_ty), mask=mask_b)
        tl.store(
            y_row + col_even + 1, (acc_odd * out_scale).to(y_row.dtype.element_ty), mask=mask_b
        )
    else:
        part = ws_ptr + (pid_k * M + pid_m) * N
        tl.store(part + col_even, acc_even, mask=mask_b)
        tl.store(part + col_even + 1, acc_odd, mask=mask_b)
        tl.debug_barrier()  # every thread's partial is stored before the release below
        count = count_ptr + pid_m * num_n_tiles + pid_n
        arrived = tl.atomic_add(count, 1, sem="acq_rel", scope="gpu")
        if arrived == SPLIT_K - 1:  # the last split of this tile: reduce in split order
            rows = ws_ptr + (tl.arange(0, SPLIT_K)[:, None] * M + pid_m) * N
            mask = mask_b[None, :]
            even = tl.load(rows + col_even[None, :], mask=mask, other=0.0, cache_modifier=".cg")
            odd = tl.load(rows + col_even[None, :] + 1, mask=mask, other=0.0, cache_modifier=".cg")
            out_even = (tl.sum(even, axis=0) * out_scale).to(y_row.dtype.element_ty)
            out_odd = (tl.sum(odd, axis=0) * out_scale).to(y_row.dtype.element_ty)
            tl.store(y_row + col_even, out_even, mask=mask_b)
            tl.store(y_row + col_even + 1, out_odd, mask=mask_b)
            tl.atomic_xchg(count, 0)  # ready for the next launch


@triton.jit
def w4a16_decode_kernel(
    x_ptr, w_ptr, s_ptr, y_ptr, ws_ptr, count_ptr, M, N, K, n_packed,
    stride_xm, stride_wk, stride_sk, stride_sn, stride_ym, group, k_per_split,
    PER_IC: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_NB: tl.constexpr, SPLIT_K: tl.constexpr,
    ACC_2D: tl.constexpr,
):  # fmt: skip
    pid_m, pid_n, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_b = pid_n * BLOCK_NB + tl.arange(0, BLOCK_NB)
    mask_b = offs_b < n_packed  # an argument, so Triton sees when it is a multiple of 16
    k_start = pid_k * k_per_split
    k_end = tl.minimum(K, k_start + k_per_split)
    acc_even, acc_odd = decode_accumulate(
        x_ptr + pid_m * stride_xm, w_ptr, s_ptr, offs_b, mask_b, pid_n * 2 * BLOCK_NB,
        k_start, k_end, group, stride_wk, stride_sk, stride_sn, 1.0,
        PER_IC, False, BLOCK_K, BLOCK_NB, ACC_2D,
    )  # fmt: skip
    store_split_k(
        acc_even, acc_odd, 1.0, y_ptr + pid_m * stride_ym, ws_ptr, count_ptr, offs_b, mask_b,
        pid_m, pid_n, pid_k, tl.num_programs(1), M, N, SPLIT_K,
    )  # fmt: skip


@triton.jit
def tile_coordinates(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """Program id → (m-tile, n-tile), walking GROUP_M m-tiles per n-tile so B tiles stay in L2."""
    pid = tl.program_id(0)
    tiles_m, tiles_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
    per_band = GROUP_M * tiles_n
    first_m = (pid // per_band) * GROUP_M
    band_m = tl.minimum(tiles_m - first_m, GROUP_M)
    return first_m + (pid % per_band) % band_m, (pid % per_band) // band_m


@triton.jit
def prefill_accumulate(
    x_ptr, w_ptr, s_ptr, offs_m, n_start, M, N, K, n_packed, stride_xm, stride_wk, stride_sk,
    stride_sn, group, act_scale, PER_IC: tl.constexpr, QUANT_ACT: tl.constexpr,
    DOT_FP32: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """fp32 ``[BLOCK_M, BLOCK_N]`` tile of ``X · dequantize(B)``."""
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    offs_n = n_start + tl.arange(0, BLOCK_N)
    offs_b = n_start // 2 + tl.arange(0, BLOCK_N // 2)
    mask_m, mask_n, mask_b = offs_m < M, offs_n < N, offs_b < n_packed
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        x_tile = x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :]
        x = tl.load(x_tile, mask=mask_m[:, None] & mask_k[None, :], other=0.0).to(tl.float32)
        if QUANT_ACT:
            x = quantize_int8(x, act_scale[:, None])
        tile = w_ptr + offs_k[:, None] * stride_wk + offs_b[None, :]
        low, high = unpack_int4(tl.load(tile, mask=mask_k[:, None] & mask_b[None, :], other=0))
        w = tl.reshape(tl.join(low, high), (BLOCK_K, BLOCK_N))  # column 2j ← low, 2j+1 ← high
        if PER_IC:
            s_col = s_ptr + (n_start // group) * stride_sn
            w = w * tl.load(s_col + offs_k * stride_sk, mask=mask_k, other=0.0)[:, None]
        if DOT_FP32:
            part = tl.dot(x, w, input_precision="tf32x3")
        else:  # fp16 operands: q and int8-grid activations are exact, scaled weights round
            part = tl.dot(x.to(tl.float16), w.to(tl.float16))
        if PER_IC:
            acc += part
        else:
            s_row = s_ptr + (k0 // group) * stride_sk
            acc += part * tl.load(s_row + offs_n * stride_sn, mask=mask_n, other=0.0)[None, :]
    return acc


@triton.jit
def w4a16_prefill_kernel(
    x_ptr, w_ptr, s_ptr, y_ptr, M, N, K, n_packed, stride_xm, stride_wk, stride_sk, stride_sn,
    stride_ym, group, PER_IC: tl.constexpr, DOT_FP32: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    pid_m, pid_n = tile_coordinates(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = prefill_accumulate(
        x_ptr, w_ptr, s_ptr, offs_m, pid_n * BLOCK_N, M, N, K, n_packed, stride_xm, stride_wk,
        stride_sk, stride_sn, group, 1.0, PER_IC, False, DOT_FP32, BLOCK_M, BLOCK_N, BLOCK_K,
    )  # fmt: skip
    y = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :]
    mask = (offs_m < M)[:, None] & (offs_n < N)[None, :]
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=mask)


def w4a16_gemm(
    x: torch.Tensor,
    packed: torch.Tensor,
    scale: torch.Tensor,
    grouping: Grouping,
    block: int,
    out_dtype: torch.dtype | None = None,
    config: DecodeConfig | PrefillConfig | None = None,
) -> torch.Tensor:
    """``x [..., K] @ dequantize(packed [K, N/2], scale)``; decode kernel for M <= 4 rows."""
    kernels = (w4a16_decode_kernel, w4a16_prefill_kernel)
    dot_fp32 = x.dtype == torch.float32
    return launch_gemm(kernels, dot_fp32, x, packed, scale, grouping, block, out_dtype, config)


def launch_gemm(
    kernels: tuple,
    prefill_flag: bool,
    x: torch.Tensor,
    packed: torch.Tensor,
    scale: torch.Tensor,
    grouping: Grouping,
    block: int,
    out_dtype: torch.dtype | None,
    config: DecodeConfig | PrefillConfig | None,
) -> torch.Tensor:
    """Pick a configuration and launch ``kernels = (decode, prefill)``; W4A16 and W4A8 share the
    signature but for the prefill kernel's last flag (W4A16: fp32 ``tl.dot``; W4A8: per-IC)."""
    decode_kernel, prefill_kernel = kernels
    m, n, k = check_operands(x, packed, scale, grouping, block)
    x2 = x.reshape(m, k)
    y = torch.empty((m, n), dtype=out_dtype or x.dtype, device=x.device)
    if config is None:
        if m <= DECODE_MAX_M:
            config = decode_config(m, n, k, grouping, block, num_sms(x.device))
        else:
            config = prefill_config(m, n, k, grouping, block)
    check_tile(k, n, grouping, block, config.block_k, config.block_n)
    per_ic = grouping is Grouping.PER_IC
    common = (m, n, k, n // 2, x2.stride(0), packed.stride(0), scale.stride(0), scale.stride(1))
    if isinstance(config, DecodeConfig):
        k_per_split = triton.cdiv(triton.cdiv(k, config.block_k), config.split_k) * config.block_k
        grid = (m, triton.cdiv(n, config.block_n), config.split_k)
        ws, count = split_k_workspace(x.device, config.split_k * m * n, grid[0] * grid[1])
        decode_kernel[grid](
            x2, packed, scale, y, ws, count, *common, y.stride(0), block, k_per_split,
            per_ic, config.block_k, config.block_n // 2, config.split_k, config.acc_2d,
            num_warps=config.num_warps, num_stages=config.num_stages, **LAUNCH_OPTIONS,
        )  # fmt: skip
    else:
        grid = (triton.cdiv(m, config.block_m) * triton.cdiv(n, config.block_n),)
        prefill_kernel[grid](
            x2, packed, scale, y, *common, y.stride(0), block, per_ic, prefill_flag,
            config.block_m, config.block_n, config.block_k, config.group_m,
            num_warps=config.num_warps, num_stages=config.num_stages, **LAUNCH_OPTIONS,
        )  # fmt: skip
    return y.reshape(*x.shape[:-1], n)
