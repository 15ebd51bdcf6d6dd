"""Ahead-of-time PTX of the plugin kernels, compiled without a GPU.

``triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=GPUTarget("cuda", cc,
32))`` runs Triton's whole pipeline for a named architecture on any machine; the PTX text and
the kernel's entry name are what a TensorRT plugin's ``aot_impl`` returns. Shapes that AOT
cannot pass as attributes (tile sizes, grouping, group size, dtypes) are baked in as constexprs.

``TRITON_INTERPRET=1`` makes ``@triton.jit`` build interpreter objects at import time, which
cannot be compiled: in such a process run ``python -m smoothrot.plugins.ptx --json`` (a child
process without that variable), as the tests do.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction

from smoothrot.plugins.hadamard_kernel import hadamard_kernel, padded
from smoothrot.plugins.int4_gemm import (
    LAUNCH_OPTIONS,
    w4a16_decode_kernel,
    w4a16_prefill_kernel,
)
from smoothrot.plugins.w4a8_gemm import w4a8_decode_kernel, w4a8_prefill_kernel

__all__ = ["ARCHS", "KernelSource", "PtxKernel", "compile_ptx", "main", "plugin_sources"]

ARCHS = (80, 87, 89, 90)  # A100 / Jetson Orin / Ada / Hopper

# Arguments that are 16-byte aligned (pointers) or multiples of 16 (leading strides) in every
# plugin instance: Triton then emits 16-byte vector loads, as its JIT does when it sees them.
_ALIGNED = ("x_ptr", "w_ptr", "s_ptr", "y_ptr", "ws_ptr", "count_ptr", "a_ptr", "b_ptr")
_ALIGNED_INTS = ("n_packed", "stride_xm", "stride_wk", "stride_ym", "stride_xt", "stride_yt")


@dataclass(frozen=True)
class KernelSource:
    label: str  # what the plugin instance is, e.g. "w4a16_decode_per_oc_g128_fp16"
    kernel: JITFunction
    pointer_types: dict[str, str]  # arg name → Triton pointer type, e.g. "*fp16"
    constexprs: dict[str, int | bool]
    num_warps: int = 4
    num_stages: int = 3
    aligned: tuple[str, ...] = field(default=_ALIGNED + _ALIGNED_INTS)

    def signature(self) -> dict[str, str]:
        names = self.kernel.arg_names
        return {
            name: "constexpr" if name in self.constexprs else self.pointer_types.get(name, "i32")
            for name in names
        }

    def attrs(self) -> dict[tuple[int, ...], list[list]]:
        names = self.kernel.arg_names
        aligned = set(self.aligned) - set(self.constexprs)
        return {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names) if n in aligned}


@dataclass(frozen=True)
class PtxKernel:
    label: str
    name: str  # the entry point in the PTX
    arch: int
    ptx: str
    num_warps: int
    shared_bytes: int
    scratch_bytes: int = 0  # global + profile scratch the launcher must allocate (0: none)

    @property
    def target(self) -> str:
        """The PTX ``.target`` directive's value, e.g. ``sm_90a``."""
        for line in self.ptx.splitlines():
            if line.startswith(".target"):
                return line.split()[1].rstrip(",")
        return ""


def compile_ptx(source: KernelSource, arch: int) -> PtxKernel:
    """Compile one kernel instance for ``sm_<arch>``; no GPU needed."""
    if not isinstance(source.kernel, JITFunction):
        raise RuntimeError(
            "kernels were built for the Triton interpreter (TRITON_INTERPRET=1); compile them in "
            "a process without it: python -m smoothrot.plugins.ptx"
        )
    src = ASTSource(source.kernel, source.signature(), source.constexprs, source.attrs())
    options = {"num_warps": source.num_warps, "num_stages": source.num_stages, **LAUNCH_OPTIONS}
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    return PtxKernel(
        label=source.label,
        name=compiled.metadata.name,
        arch=arch,
        ptx=compiled.asm["ptx"],
        num_warps=source.num_warps,
        shared_bytes=compiled.metadata.shared,
        scratch_bytes=compiled.metadata.global_scratch_size
        + compiled.metadata.profile_scratch_size,
    )


def _gemm_pointers(act: str, out: str, split_k: bool) -> dict[str, str]:
    types = {"x_ptr": f"*{act}", "w_ptr": "*i8", "s_ptr": "*fp32", "y_ptr": f"*{out}"}
    if split_k:
        types |= {"ws_ptr": "*fp32", "count_ptr": "*i32"}
    return types


def plugin_sources(group: int = 128, hadamard_factors: tuple[int, int] = (64, 64)):
    """The kernel instances a TensorRT engine of an fp16 model needs (fp16 in and out)."""
    sources: list[KernelSource] = []
    for per_ic, tag in ((False, "per_oc"), (True, "per_ic")):
        decode = {"PER_IC": per_ic, "BLOCK_K": 64, "BLOCK_NB": 64, "SPLIT_K": 8, "ACC_2D": True}
        prefill = {"PER_IC": per_ic, "DOT_FP32": False, "BLOCK_M": 64, "BLOCK_N": 128}
        prefill |= {"BLOCK_K": min(group, 64), "GROUP_M": 8}
        for kind, kernel, constexprs, split in (
            ("w4a16_decode", w4a16_decode_kernel, decode, True),
            ("w4a16_prefill", w4a16_prefill_kernel, prefill, False),
            ("w4a8_decode", w4a8_decode_kernel, decode, True),
            ("w4a8_prefill", w4a8_prefill_kernel, prefill | {"DOT_FP32": per_ic}, False),
        ):
            label = f"{kind}_{tag}_g{group}_fp16"
            pointers = _gemm_pointers("fp16", "fp16", split)
            sources.append(KernelSource(label, kernel, pointers, constexprs))
    m, p = hadamard_factors
    pointers = {"x_ptr": "*fp16", "a_ptr": "*fp32", "b_ptr": "*fp32", "y_ptr": "*fp16"}
    constexprs = {"M_PAD": padded(m), "P_PAD": padded(p)}
    sources.append(KernelSource(f"hadamard_{m}x{p}_fp16", hadamard_kernel, pointers, constexprs))
    return sources


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Compile the plugin kernels to PTX (no GPU).")
    parser.add_argument("--arch", type=int, nargs="+", default=list(ARCHS))
    parser.add_argument("--group", type=int, default=128)
    parser.add_argument("--hadamard", type=int, nargs=2, default=(64, 64), metavar=("M", "P"))
    parser.add_argument("--only", nargs="+", help="compile only these labels")
    parser.add_argument("--json", action="store_true", help="one JSON record per kernel")
    args = parser.parse_args(argv)
    records = []
    sources = plugin_sources(args.group, tuple(args.hadamard))
    unknown = set(args.only or ()) - {s.label for s in sources}
    if unknown:
        parser.error(
            f"unknown kernel labels {sorted(unknown)}; known: {[s.label for s in sources]}"
        )
    for source in sources:
        if args.only and source.label not in args.only:
            continue
        for arch in args.arch:
            k = compile_ptx(source, arch)
            records.append(
                {"label": k.label, "name": k.name, "arch": k.arch, "target": k.target,
                 "ptx_bytes": len(k.ptx), "shared_bytes": k.shared_bytes}
            )  # fmt: skip
    if args.json:
        json.dump(records, sys.stdout)
        print()
    else:
        for r in records:
            print(
                f"{r['label']:40s} sm_{r['arch']}  {r['target']:8s} {r['name']}  {r['ptx_bytes']} B"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
