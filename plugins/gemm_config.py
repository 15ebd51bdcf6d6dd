"""Tile configurations of the INT4 GEMM kernels, their defaults, operand checks, workspace.

Imports no Triton: the TensorRT plugin specs (:mod:`.trt_spec`) choose tiles with it in processes
that must not import Triton (it fixes the interpreter mode at import).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from smoothrot.core.int4 import Grouping
from smoothrot.plugins.reference import check_int4_operands

__all__ = [
    "DECODE_MAX_M",
    "DecodeConfig",
    "PrefillConfig",
    "check_operands",
    "check_tile",
    "decode_config",
    "num_sms",
    "prefill_config",
    "split_k_workspace",
]

# Up to this many rows the decode kernel runs (each row re-reads the weight tile, from L2);
# beyond it the tensor-core kernel (16-row tiles) does. A choice: time it with bench_kernels.
DECODE_MAX_M = 4


def _is_pow2(v: int) -> bool:
    return v > 0 and v & (v - 1) == 0


def _pow2_divisor(v: int, cap: int) -> int:
    """Largest power of two <= cap that divides v."""
    d = 1
    while d * 2 <= cap and v % (d * 2) == 0:
        d *= 2
    return d


@dataclass(frozen=True)
class DecodeConfig:
    """Tiles of the split-K decode kernel (all powers of two)."""

    block_k: int
    block_n: int  # output columns per program (block_n / 2 bytes per weight row)
    split_k: int
    num_warps: int = 4
    num_stages: int = 2
    acc_2d: bool = True

    def __post_init__(self) -> None:
        for name in ("block_k", "block_n", "split_k", "num_warps"):
            if not _is_pow2(getattr(self, name)):
                raise ValueError(f"{name} must be a power of two, got {getattr(self, name)}")
        if self.block_n < 2:
            raise ValueError("block_n must be >= 2 (one packed byte)")


@dataclass(frozen=True)
class PrefillConfig:
    """Tiles of the ``tl.dot`` kernel (powers of two >= 16); ``group_m`` m-tiles share B tiles."""

    block_m: int
    block_n: int
    block_k: int
    group_m: int = 8
    num_warps: int = 4
    num_stages: int = 3

    def __post_init__(self) -> None:
        for name in ("block_m", "block_n", "block_k"):
            if not (_is_pow2(getattr(self, name)) and getattr(self, name) >= 16):
                raise ValueError(f"{name} must be a power of two >= 16 (tl.dot)")


def check_tile(k: int, n: int, grouping: Grouping, block: int, block_k: int, block_n: int) -> None:
    """ValueError unless every tile lies inside one scale group (the kernels load one vector)."""
    if grouping is Grouping.PER_OC and block < k and block % block_k:
        raise ValueError(f"per-OC group {block} is not a multiple of block_k {block_k}")
    if grouping is Grouping.PER_IC and block < n and block % block_n:
        raise ValueError(f"per-IC group {block} is not a multiple of block_n {block_n}")


def decode_config(
    m: int, n: int, k: int, grouping: Grouping, block: int, num_sms: int
) -> DecodeConfig:
    """Tiles inside one group, 64-byte weight rows, and about 4 programs per SM."""
    block_k = _pow2_divisor(block, 64) if grouping is Grouping.PER_OC and block < k else 64
    block_n = _pow2_divisor(block, 128) if grouping is Grouping.PER_IC and block < n else 128
    tiles = m * -(-n // block_n)
    split_k = 1
    while tiles * split_k * 2 <= 4 * num_sms and split_k * 2 * block_k <= k:
        split_k *= 2
    return DecodeConfig(block_k, max(block_n, 2), split_k)


def prefill_config(m: int, n: int, k: int, grouping: Grouping, block: int) -> PrefillConfig:
    block_k = _pow2_divisor(block, 64) if grouping is Grouping.PER_OC and block < k else 64
    block_n = _pow2_divisor(block, 128) if grouping is Grouping.PER_IC and block < n else 128
    block_m = 16 if m <= 16 else 32 if m <= 32 else 64
    return PrefillConfig(block_m, max(block_n, 16), max(block_k, 16))


_WORKSPACES: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def split_k_workspace(device: torch.device, partials: int, counters: int):
    """fp32 partial sums and zeroed int32 arrival counters, kept per device and grown on demand.
    The kernels reset each counter they use, so one zero-fill serves every later launch (one
    stream per device: two concurrent launches would share the counters)."""
    ws, count = _WORKSPACES.get(device, (None, None))
    if ws is None or ws.numel() < partials:
        ws = torch.empty(max(partials, 1), dtype=torch.float32, device=device)
    if count is None or count.numel() < counters:
        count = torch.zeros(max(counters, 1), dtype=torch.int32, device=device)
    _WORKSPACES[device] = (ws, count)
    return ws, count


def check_operands(x, packed, scale, grouping: Grouping, block: int) -> tuple[int, int, int]:
    """(M, N, K) of a GEMM call; ValueError for a bad shape, dtype or group size."""
    if x.dtype not in (torch.float16, torch.float32):
        raise ValueError(f"activations must be fp16 or fp32, got {x.dtype}")
    if packed.dtype != torch.int8 or packed.dim() != 2 or packed.stride(1) != 1:
        raise ValueError("packed weights must be a row-major int8 [K, N/2] tensor")
    if scale.dtype not in (torch.float16, torch.float32):
        raise ValueError(f"scales must be fp16 or fp32, got {scale.dtype}")
    k, n = packed.shape[0], 2 * packed.shape[1]
    if x.shape[-1] != k or x.stride(-1) != 1:
        raise ValueError(f"x {tuple(x.shape)} does not match packed weights of K={k}")
    check_int4_operands(k, n, tuple(scale.shape), grouping, block)
    return x.numel() // k, n, k


def num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 8  # the interpreter: any count works, a small one keeps the grid small
