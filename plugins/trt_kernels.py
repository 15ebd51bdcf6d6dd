"""The plugin kernels in TensorRT's AOT argument order, and their PTX.

TensorRT launches an AOT plugin's kernel with ``(x, w, s, M, y)`` for the GEMMs and
``(x, a, b, y)`` for the Hadamard rotation: inputs, then the ``i32`` extra arguments, then
outputs (:mod:`.trt_spec`). The GEMM entry points below take that order and reuse the jitted
bodies of :mod:`.int4_gemm` / :mod:`.w4a8_gemm`, with everything but ``M`` a constexpr (strides
of contiguous tensors, ``K``, ``N``, the group); the Hadamard plugin uses
:func:`~smoothrot.plugins.hadamard_kernel.hadamard_kernel` itself with its scalars as constexprs.
Under ``TRITON_INTERPRET=1`` they run on the CPU, called exactly as TensorRT calls them.

``python -m smoothrot.plugins.trt_kernels --json`` compiles a set of plugin instances to PTX (no
GPU) and prints each entry point's parameter types, shared memory and scratch bytes.
"""

from __future__ import annotations

import argparse
import json
import re
import sys

import triton
import triton.language as tl

from smoothrot.core.int4 import Grouping
from smoothrot.plugins.hadamard_kernel import hadamard_kernel
from smoothrot.plugins.int4_gemm import (
    decode_accumulate,
    prefill_accumulate,
    store_split_k,
    tile_coordinates,
)
from smoothrot.plugins.ptx import KernelSource, PtxKernel, compile_ptx
from smoothrot.plugins.trt_spec import (
    SHARED_LIMIT,
    ActType,
    GemmAttrs,
    HadamardAttrs,
    LaunchPlan,
    PluginOp,
    Tactic,
    gemm_plan,
    hadamard_plan,
)
from smoothrot.plugins.w4a8_gemm import row_scale, token_scales

__all__ = ["KERNELS", "compile_plan", "entry_params", "kernel_source", "main"]


@triton.jit
def gemm_decode_trt_kernel(
    x_ptr, w_ptr, s_ptr, M, y_ptr, N: tl.constexpr, K: tl.constexpr, GROUP: tl.constexpr,
    STRIDE_SK: tl.constexpr, PER_IC: tl.constexpr, QUANT_ACT: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_NB: tl.constexpr, ACC_2D: tl.constexpr,
):  # fmt: skip
    """Grid ``(M, N / (2·BLOCK_NB))``; one row and one column tile per program, no split-K."""
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    offs_b = pid_n * BLOCK_NB + tl.arange(0, BLOCK_NB)
    mask_b = offs_b < N // 2
    x_row = x_ptr + pid_m * K
    s_x = row_scale(x_row, K, 1024) if QUANT_ACT else 1.0
    acc_even, acc_odd = decode_accumulate(
        x_row, w_ptr, s_ptr, offs_b, mask_b, pid_n * 2 * BLOCK_NB, 0, K, GROUP,
        N // 2, STRIDE_SK, 1, s_x, PER_IC, QUANT_ACT, BLOCK_K, BLOCK_NB, ACC_2D,
    )  # fmt: skip
    # SPLIT_K = 1: the workspace and counter arguments are never touched (y_ptr stands in).
    store_split_k(
        acc_even, acc_odd, s_x, y_ptr + pid_m * N, y_ptr, y_ptr, offs_b, mask_b,
        pid_m, pid_n, 0, tl.num_programs(1), M, N, 1,
    )  # fmt: skip


@triton.jit
def gemm_prefill_trt_kernel(
    x_ptr, w_ptr, s_ptr, M, y_ptr, N: tl.constexpr, K: tl.constexpr, GROUP: tl.constexpr,
    STRIDE_SK: tl.constexpr, PER_IC: tl.constexpr, QUANT_ACT: tl.constexpr,
    DOT_FP32: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):  # fmt: skip
    """Grid ``(⌈M / BLOCK_M⌉ · ⌈N / BLOCK_N⌉,)``."""
    pid_m, pid_n = tile_coordinates(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    if QUANT_ACT:
        s_x = token_scales(x_ptr, offs_m, M, K, K, BLOCK_M, BLOCK_K)
        acc = prefill_accumulate(
            x_ptr, w_ptr, s_ptr, offs_m, pid_n * BLOCK_N, M, N, K, N // 2, K, N // 2, STRIDE_SK,
            1, GROUP, s_x, PER_IC, True, DOT_FP32, BLOCK_M, BLOCK_N, BLOCK_K,
        )  # fmt: skip
        acc = acc * s_x[:, None]
    else:
        acc = prefill_accumulate(
            x_ptr, w_ptr, s_ptr, offs_m, pid_n * BLOCK_N, M, N, K, N // 2, K, N // 2, STRIDE_SK,
            1, GROUP, 1.0, PER_IC, False, DOT_FP32, BLOCK_M, BLOCK_N, BLOCK_K,
        )  # fmt: skip
    y = y_ptr + offs_m[:, None] * N + offs_n[None, :]
    mask = (offs_m < M)[:, None] & (offs_n < N)[None, :]
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=mask)


KERNELS = {
    "gemm_decode": gemm_decode_trt_kernel,
    "gemm_prefill": gemm_prefill_trt_kernel,
    "hadamard": hadamard_kernel,
}


def kernel_source(plan: LaunchPlan) -> KernelSource:
    """The :mod:`.ptx` source of ``plan``: its pointers 16-byte aligned (TensorRT allocates
    tensors with at least 256-byte alignment), everything else a constexpr."""
    pointers = plan.pointer_types
    return KernelSource(
        label=plan.label,
        kernel=KERNELS[plan.kernel],
        pointer_types=pointers,
        constexprs=dict(plan.constexprs),
        num_warps=plan.num_warps,
        num_stages=plan.num_stages,
        aligned=tuple(pointers),
    )


def compile_plan(plan: LaunchPlan, arch: int) -> PtxKernel:
    """PTX of ``plan`` for ``sm_<arch>``; RuntimeError if it needs what an AOT launch lacks."""
    kernel = compile_ptx(kernel_source(plan), arch)
    if kernel.scratch_bytes:
        raise RuntimeError(f"{plan.label} needs {kernel.scratch_bytes} B of Triton scratch memory")
    if kernel.shared_bytes > SHARED_LIMIT:
        raise RuntimeError(
            f"{plan.label} uses {kernel.shared_bytes} B of shared memory (limit {SHARED_LIMIT})"
        )
    return kernel


def entry_params(ptx: str, name: str) -> list[str]:
    """The PTX types of ``name``'s parameters, in order (e.g. ``["u64", "u32", …]``)."""
    match = re.search(rf"\.entry {re.escape(name)}\((.*?)\)", ptx, re.S)
    if match is None:
        raise ValueError(f"no .entry {name} in the PTX")
    return re.findall(r"\.param \.(\w+)", match.group(1))


def _sample_plans(act: ActType) -> list[LaunchPlan]:
    plans = [hadamard_plan(HadamardAttrs(24, 32), act)]
    for op in (PluginOp.W4A16_GEMM, PluginOp.W4A8_GEMM):
        for grouping, group in ((Grouping.PER_OC, 64), (Grouping.PER_IC, 32)):
            attrs = GemmAttrs(576, 1536, grouping, group)
            plans += [gemm_plan(op, attrs, act, tactic) for tactic in Tactic]
    return plans


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Compile TensorRT plugin kernels to PTX.")
    parser.add_argument("--arch", type=int, nargs="+", default=[80])
    parser.add_argument("--act", choices=[a.value for a in ActType], nargs="+", default=["fp16"])
    parser.add_argument("--json", action="store_true", help="one JSON list of records")
    args = parser.parse_args(argv)
    records = []
    for act in args.act:
        for plan in _sample_plans(ActType(act)):
            for arch in args.arch:
                k = compile_plan(plan, arch)
                records.append(
                    {"label": plan.label, "kernel": plan.kernel, "name": k.name, "arch": arch,
                     "target": k.target, "params": entry_params(k.ptx, k.name),
                     "shared_bytes": k.shared_bytes, "scratch_bytes": k.scratch_bytes,
                     "reqntid": plan.block_threads, "ptx_bytes": len(k.ptx),
                     "ptx_reqntid": f".reqntid {plan.block_threads}" in k.ptx}
                )  # fmt: skip
    if args.json:
        json.dump(records, sys.stdout)
        print()
    else:
        for r in records:
            print(f"{r['label']:56s} sm_{r['arch']} {r['shared_bytes']:6d} B  {r['params']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
