"""Our Triton kernels as TensorRT AOT Python plugins (``tensorrt.plugin``, TensorRT >= 10.9).

:func:`register_plugins` registers ``smoothrot::w4a16_gemm``, ``smoothrot::w4a8_gemm`` and
``smoothrot::kron_hadamard`` (:mod:`.trt_spec` describes them) with TensorRT's plugin registry.
For each plugin it defines

- ``@trtp.register``: the output descriptor (``[..., N]`` or ``x``'s shape, ``x``'s type);
- ``@trtp.autotune``: the type combinations (fp16 or fp32 activations, int8 packed weights, fp32
  scales / factors) and, for the GEMMs, the decode and prefill tactics, which TensorRT times per
  optimization profile;
- ``@trtp.aot_impl``: the kernel's entry name, its PTX (:mod:`.ptx`, compiled for the GPU that
  builds the engine, attributes baked in as constexprs), the launch grid and block as symbolic
  expressions of the row count ``M``, and ``M`` as the one ``SymInt32`` extra argument.

An engine built from an ONNX graph with these nodes (``aot = 1``, :mod:`smoothrot.passes.
lower_trt_plugins`) carries the PTX and runs from C++ or ``trtexec`` without Python. Building
needs TensorRT >= 10.9 with its Python bindings and a CUDA GPU; TensorRT-RTX has no plugin API.
TensorRT is imported only inside these functions.

This module deliberately has no ``from __future__ import annotations``: ``tensorrt.plugin``
reads the annotations of the ``register`` functions as objects to learn attribute types.
"""

import functools
import importlib
import re
from types import ModuleType
from typing import TYPE_CHECKING

from smoothrot.core.errors import SmoothrotError
from smoothrot.core.tensorrt import import_trt_module
from smoothrot.plugins.trt_spec import (
    ActType,
    GemmAttrs,
    HadamardAttrs,
    LaunchPlan,
    PluginOp,
    Tactic,
    gemm_plan,
    hadamard_plan,
)

if TYPE_CHECKING:
    from smoothrot.plugins.ptx import PtxKernel  # imports Triton

__all__ = ["INSTALL_HINT", "MIN_TENSORRT", "plugin_api", "register_plugins", "trt_version"]

MIN_TENSORRT = (10, 9)
INSTALL_HINT = (
    "install NVIDIA TensorRT >= 10.9 with its Python bindings (pip install 'smoothrot[tensorrt]' "
    "fetches it from NVIDIA's index); TensorRT-RTX (tensorrt_rtx_bindings) has no plugin API"
)
_registered: set[str] = set()


def trt_version(module: ModuleType) -> tuple[int, ...]:
    """``tensorrt.__version__`` as integers, e.g. ``(10, 9, 0, 34)``."""
    return tuple(int(p) for p in re.findall(r"\d+", str(getattr(module, "__version__", "")))[:4])


def plugin_api() -> tuple[ModuleType, ModuleType]:
    """``(tensorrt, tensorrt.plugin)``; SmoothrotError naming what to install if unusable."""
    trt = import_trt_module("tensorrt")
    if trt is None:
        raise SmoothrotError(f"TensorRT is not importable: {INSTALL_HINT}")
    version = trt_version(trt)
    if version[:2] < MIN_TENSORRT:
        found = ".".join(map(str, version)) or "unknown"
        raise SmoothrotError(f"TensorRT {found} has no AOT Python plugins: {INSTALL_HINT}")
    try:
        trtp = importlib.import_module("tensorrt.plugin")
    except Exception as exc:  # noqa: BLE001
        raise SmoothrotError(f"tensorrt.plugin is not importable ({exc}): {INSTALL_HINT}") from None
    return trt, trtp


def _device_arch() -> int:
    import torch

    if not torch.cuda.is_available():
        raise SmoothrotError(
            "no CUDA GPU: the plugins compile their PTX for the GPU that builds the engine"
        )
    major, minor = torch.cuda.get_device_capability()
    return major * 10 + minor


@functools.cache
def _compiled(plan: LaunchPlan, arch: int) -> "PtxKernel":
    from smoothrot.plugins.trt_kernels import compile_plan  # imports Triton

    return compile_plan(plan, arch)


def _launch(trtp: ModuleType, plan: LaunchPlan, m, arch: int) -> tuple:
    """What ``aot_impl`` returns: (entry name, PTX, launch parameters, extra arguments)."""
    kernel = _compiled(plan, arch)
    params = trtp.KernelLaunchParams()
    params.grid_x, params.grid_y, params.grid_z = plan.grid(m, cdiv=trtp.cdiv)
    params.block_x = plan.block_threads
    params.shared_mem = kernel.shared_bytes
    values = plan.extra_args(m)
    extra = trtp.SymIntExprs(len(values))
    for i, value in enumerate(values):
        extra[i] = trtp.SymInt32(value)
    return kernel.name.encode(), kernel.ptx.encode(), params, extra


def _rows(desc):
    """``M``: the product of all but the last dimension, a symbolic expression."""
    if desc.ndim < 2:
        raise ValueError(f"plugin input x must have rank >= 2, got {desc.ndim}")
    shape = desc.shape_expr
    m = shape[0]
    for i in range(1, desc.ndim - 1):
        m = m * shape[i]
    return m


def _act(trt: ModuleType, desc) -> ActType:
    if desc.dtype == trt.float16:
        return ActType.FP16
    if desc.dtype == trt.float32:
        return ActType.FP32
    raise ValueError(f"plugin activations must be fp16 or fp32, got {desc.dtype}")


def _combinations(trtp: ModuleType, middle: str, tactics: list[int] | None) -> list:
    """One type combination per activation type: ``x, <middle>, y``."""
    return [
        trtp.AutoTuneCombination(f"{t}, {middle}, {t}", "LINEAR", tactics) for t in ("FP16", "FP32")
    ]


def _register_gemm(trt: ModuleType, trtp: ModuleType, op: PluginOp, arch: int) -> None:
    def attributes(k, n, per_ic, group_size) -> GemmAttrs:
        return GemmAttrs.from_attributes(
            {"k": k, "n": n, "per_ic": per_ic, "group_size": group_size}
        )

    @trtp.register(op.plugin_id)
    def descriptor(
        x: trtp.TensorDesc,
        w: trtp.TensorDesc,
        s: trtp.TensorDesc,
        k: int,
        n: int,
        per_ic: int,
        group_size: int,
    ) -> trtp.TensorDesc:
        attrs = attributes(k, n, per_ic, group_size)
        _rows(x)
        dims = tuple(x.shape_expr[i] for i in range(x.ndim - 1)) + (attrs.n,)
        return trtp.from_shape_expr(dims, dtype=x.dtype)

    @trtp.autotune(op.plugin_id)
    def autotune(x, w, s, outputs):
        return _combinations(trtp, "INT8, FP32", [int(t) for t in Tactic])

    @trtp.aot_impl(op.plugin_id)
    def aot(x, w, s, k, n, per_ic, group_size, outputs, tactic):
        attrs = attributes(k, n, per_ic, group_size)
        plan = gemm_plan(op, attrs, _act(trt, x), Tactic(tactic))
        return _launch(trtp, plan, _rows(x), arch)


def _register_hadamard(trt: ModuleType, trtp: ModuleType, arch: int) -> None:
    op = PluginOp.KRON_HADAMARD

    @trtp.register(op.plugin_id)
    def descriptor(
        x: trtp.TensorDesc, a: trtp.TensorDesc, b: trtp.TensorDesc, m: int, p: int
    ) -> trtp.TensorDesc:
        HadamardAttrs(m, p)
        _rows(x)
        return x.like()

    @trtp.autotune(op.plugin_id)
    def autotune(x, a, b, outputs):
        return _combinations(trtp, "FP32, FP32", None)

    @trtp.aot_impl(op.plugin_id)
    def aot(x, a, b, m, p, outputs):
        plan = hadamard_plan(HadamardAttrs(m, p), _act(trt, x))
        return _launch(trtp, plan, _rows(x), arch)


def register_plugins(arch: int | None = None) -> tuple[str, ...]:
    """Register the plugins (once per process) and return their ids.

    ``arch``: the compute capability the PTX is compiled for (default: the current GPU's, the one
    TensorRT builds for). SmoothrotError if TensorRT >= 10.9 or a GPU is missing.
    """
    trt, trtp = plugin_api()
    arch = arch if arch is not None else _device_arch()
    for op in PluginOp:
        if op.plugin_id in _registered:
            continue
        if op is PluginOp.KRON_HADAMARD:
            _register_hadamard(trt, trtp, arch)
        else:
            _register_gemm(trt, trtp, op, arch)
        _registered.add(op.plugin_id)
    return tuple(op.plugin_id for op in PluginOp)
