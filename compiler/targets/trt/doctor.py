"""``smoothrot doctor``: what is installed, and (``--trt``) whether our TensorRT plugins work.

:func:`environment` reports the TensorRT (enterprise) and TensorRT-RTX bindings, Triton, torch
and the GPU. :func:`check_plugins` needs TensorRT >= 10.9, Triton and a CUDA GPU: for each
plugin and activation type it builds a one-layer ONNX graph (:mod:`.plugin_layers` lowered by
:class:`~smoothrot.passes.lower_trt_plugins.LowerToTrtPluginsPass`: one AOT plugin node),
parses it with TensorRT's ONNX parser into a strongly typed network, builds, serializes and
deserializes the engine, runs it for several row counts and compares the output with the numpy
reference of the node (:func:`~smoothrot.plugins.trt_spec.plugin_reference`).
"""

from __future__ import annotations

import importlib
import importlib.metadata
from dataclasses import asdict, dataclass
from types import ModuleType
from typing import Any

import numpy as np
import onnx_ir as ir

from smoothrot.compiler.targets.trt.plugin_layers import gemm_layer, rotation_layer
from smoothrot.core.errors import SmoothrotError
from smoothrot.core.int4 import Grouping
from smoothrot.core.tensorrt import import_trt_module
from smoothrot.passes.lower_trt_plugins import LowerToTrtPluginsPass
from smoothrot.plugins.trt_plugins import MIN_TENSORRT, plugin_api, register_plugins, trt_version
from smoothrot.plugins.trt_spec import (
    ActType,
    HadamardAttrs,
    PluginOp,
    plugin_attributes,
    plugin_reference,
)

__all__ = ["Environment", "PluginCheck", "check_plugins", "environment"]

ROWS = (1, 5, 37)  # row counts run through each engine
PROFILE_ROWS = (1, 8, 64)  # the engine's optimization profile: min, opt, max rows
# max |y − reference| allowed, relative to max |reference|: fp16 output rounds at 2^-11.
REL_TOLERANCE = {ActType.FP16: 4e-3, ActType.FP32: 1e-4}


def _module(*names: str) -> ModuleType | None:
    return next((m for m in map(import_trt_module, names) if m is not None), None)


@dataclass(frozen=True)
class Environment:
    tensorrt: str | None  # TensorRT (enterprise) version, None if not importable
    tensorrt_plugins: bool  # TensorRT >= 10.9 with tensorrt.plugin
    tensorrt_rtx: str | None  # TensorRT-RTX bindings version (no plugin API)
    triton: str | None
    torch: str
    cuda: bool
    gpu: str | None  # name and compute capability

    def missing_for_plugins(self) -> list[str]:
        """What ``doctor --trt`` lacks, as phrases; empty when it can run."""
        missing = []
        if not self.tensorrt_plugins:
            found = f"found {self.tensorrt}" if self.tensorrt else "not installed"
            if self.tensorrt_rtx:
                found += f"; tensorrt_rtx_bindings {self.tensorrt_rtx} has no plugin API"
            need = ".".join(map(str, MIN_TENSORRT))
            missing.append(f"TensorRT >= {need} with tensorrt.plugin ({found})")
        if not self.cuda:
            missing.append("a CUDA GPU (torch sees none)")
        if not self.triton:
            missing.append("triton (compiles the plugins' PTX)")
        return missing

    def lines(self) -> list[str]:
        plugins = "AOT plugins available" if self.tensorrt_plugins else "no AOT plugins"
        gpu = self.gpu or "none"
        return [
            f"tensorrt              {self.tensorrt or 'not installed'} ({plugins})",
            f"tensorrt_rtx_bindings {self.tensorrt_rtx or 'not installed'} (no plugin API)",
            f"triton                {self.triton or 'not installed'}",
            f"torch                 {self.torch} (CUDA {'available' if self.cuda else 'absent'})",
            f"gpu                   {gpu}",
        ]


def environment() -> Environment:
    import torch

    trt = _module("tensorrt")
    plugins = trt is not None and trt_version(trt)[:2] >= MIN_TENSORRT and _has_plugin_module()
    rtx = _module("tensorrt_rtx_bindings", "tensorrt_rtx")
    try:
        triton = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        triton = None
    cuda = torch.cuda.is_available()
    gpu = None
    if cuda:
        major, minor = torch.cuda.get_device_capability()
        gpu = f"{torch.cuda.get_device_name()} (sm_{major}{minor})"
    return Environment(
        tensorrt=getattr(trt, "__version__", None) if trt else None,
        tensorrt_plugins=plugins,
        tensorrt_rtx=getattr(rtx, "__version__", "?") if rtx else None,
        triton=triton,
        torch=torch.__version__,
        cuda=cuda,
        gpu=gpu,
    )


def _has_plugin_module() -> bool:
    try:
        importlib.import_module("tensorrt.plugin")
    except Exception:  # noqa: BLE001
        return False
    return True


@dataclass(frozen=True)
class PluginCheck:
    case: str  # e.g. "w4a8_gemm per-ic g64 576x1536 fp16"
    rows: int
    max_abs_diff: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return bool(self.max_abs_diff <= self.tolerance)

    def line(self) -> str:
        verdict = "pass" if self.passed else "FAIL"
        return (
            f"{self.case:40s} M={self.rows:<3d} max|diff| {self.max_abs_diff:.2e} "
            f"(tol {self.tolerance:.2e}) {verdict}"
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"passed": self.passed}


def _cases() -> list[tuple[str, ir.Model]]:
    k, n, cases = 576, 1536, []
    for op in (PluginOp.W4A16_GEMM, PluginOp.W4A8_GEMM):
        for grouping, group in ((Grouping.PER_OC, 64), (Grouping.PER_IC, 64)):
            model = gemm_layer(op, k, n, grouping, group)
            cases.append((f"{op.value} {grouping.value} g{group} {k}x{n}", model))
    cases.append((f"{PluginOp.KRON_HADAMARD.value} {k}", rotation_layer(k)))
    return cases


def _plugin_model(model: ir.Model, act: ActType) -> tuple[bytes, ir.Node]:
    """``model`` lowered to its one plugin node, with ``x`` and ``y`` of type ``act``."""
    skipped = LowerToTrtPluginsPass()(model).details["skipped"]
    nodes = list(model.graph)
    if len(nodes) != 1 or skipped:
        raise RuntimeError(f"the layer did not lower to one plugin node: {skipped}")
    dtype = ir.DataType.FLOAT16 if act is ActType.FP16 else ir.DataType.FLOAT
    for value in (model.graph.inputs[0], model.graph.outputs[0]):
        value.type = ir.TensorType(dtype)
    return ir.serde.serialize_model(model).SerializeToString(), nodes[0]


def _engine(trt: ModuleType, onnx_bytes: bytes, k: int):
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(0 if flag is None else 1 << int(flag))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT's ONNX parser refused the plugin node: {errors}")
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("x", *((1, rows, k) for rows in PROFILE_ROWS))
    config.add_optimization_profile(profile)
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise RuntimeError("TensorRT could not build the engine (see its log above)")
    engine = trt.Runtime(logger).deserialize_cuda_engine(bytes(blob))
    if engine is None:
        raise RuntimeError("TensorRT could not deserialize the engine it built")
    return engine


def _run(engine, x, n: int):
    import torch

    context = engine.create_execution_context()
    context.set_input_shape("x", tuple(x.shape))
    y = torch.empty((*x.shape[:-1], n), dtype=x.dtype, device=x.device)
    context.set_tensor_address("x", x.data_ptr())
    context.set_tensor_address("y", y.data_ptr())
    stream = torch.cuda.current_stream()
    if not context.execute_async_v3(stream.cuda_stream):
        raise RuntimeError("TensorRT failed to run the engine")
    stream.synchronize()
    return y


def _widths(node: ir.Node) -> tuple[int, int]:
    """Last dimension of the plugin's input and output."""
    _, attrs = plugin_attributes(node)
    if isinstance(attrs, HadamardAttrs):
        return attrs.m * attrs.p, attrs.m * attrs.p
    return attrs.k, attrs.n


def check_plugins(seed: int = 0) -> list[PluginCheck]:
    """Build and run one engine per plugin and activation type; compare with the reference.

    SmoothrotError (naming what to install) without TensorRT >= 10.9, Triton or a GPU.
    """
    missing = environment().missing_for_plugins()
    if missing:
        raise SmoothrotError(f"doctor --trt needs {' and '.join(missing)}")
    import torch

    trt, _ = plugin_api()
    register_plugins()
    rng = np.random.default_rng(seed)
    checks = []
    for act in ActType:
        dtype = torch.float16 if act is ActType.FP16 else torch.float32
        for name, model in _cases():
            onnx_bytes, node = _plugin_model(model, act)
            n_in, n_out = _widths(node)
            engine = _engine(trt, onnx_bytes, n_in)
            for rows in ROWS:
                x = torch.from_numpy(rng.standard_normal((1, rows, n_in)) * 2).to("cuda", dtype)
                y = _run(engine, x, n_out).float().cpu().numpy()
                ref = plugin_reference(node, x.float().cpu().numpy())
                tol = REL_TOLERANCE[act] * float(np.abs(ref).max())
                diff = float(np.abs(y - ref).max())
                checks.append(PluginCheck(f"{name} {act.value}", rows, diff, tol))
    return checks
