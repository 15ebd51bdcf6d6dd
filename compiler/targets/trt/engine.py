"""Parse a TensorRT-form ONNX decoder graph and build a serialized engine with two profiles.

Profiles (batch 1; the runners pick one per step):

- **0, prefill**: ``S`` new tokens in ``1..max_prompt`` with an empty cache (``P = 0``);
- **1, decode**: one new token with ``P`` cached positions in ``1..max_context − 1``.

The network is strongly typed: every layer runs in the type the graph gives it (fp16 compute
with fp32 islands, INT4 weights as blocked DequantizeLinear; see ``passes/to_fp16.py``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from smoothrot.compiler.config import EngineConfig
from smoothrot.core.errors import SmoothrotError
from smoothrot.core.manifest import ModelDims
from smoothrot.core.tensorrt import trt_logger

__all__ = ["build_engine", "check_engine_header", "trtexec_command"]

log = logging.getLogger(__name__)
_HEADER_FAULTS = ("MALFORMED_ENGINE", "VERSION_MISMATCH")


def _profile_shapes(name: str, dims: ModelDims, c: EngineConfig) -> list[tuple]:
    """(min, opt, max) of input ``name`` in profile 0 (prefill) and 1 (decode)."""
    tokens = ((1, 1), (1, c.opt_prompt), (1, c.max_prompt))
    if name in ("input_ids", "position_ids"):
        return [tokens, ((1, 1),) * 3]
    if name == "attention_mask":
        return [tokens, ((1, 2), (1, c.opt_context), (1, c.max_context))]
    if name.startswith("past."):
        cache = (1, dims.kv_heads, 0, dims.head_dim)
        grown = [(1, dims.kv_heads, n, dims.head_dim) for n in (1, c.opt_context - 1)]
        return [(cache,) * 3, (*grown, (1, dims.kv_heads, c.max_context - 1, dims.head_dim))]
    raise SmoothrotError(f"engine input {name!r} is not one the decoder profiles know")


def trtexec_command(inputs: list[str], dims: ModelDims, config: EngineConfig) -> str:
    """The ``trtexec`` line that builds the same engine from ``model.onnx`` (same profiles): the
    route on machines where smoothrot itself does not install (JetPack's Python and TensorRT)."""
    per_profile: list[list[list[str]]] = [[[], [], []], [[], [], []]]
    for name in inputs:
        for profile, shapes in enumerate(_profile_shapes(name, dims, config)):
            for which, shape in enumerate(shapes):
                per_profile[profile][which].append(f"{name}:{'x'.join(map(str, shape))}")
    words = ["trtexec --onnx=model.onnx --stronglyTyped --saveEngine=engine.trt"]
    for profile, (low, opt, high) in enumerate(per_profile):
        words += [
            f"--profile={profile}",
            f"--minShapes={','.join(low)}",
            f"--optShapes={','.join(opt)}",
            f"--maxShapes={','.join(high)}",
        ]
    return " \\\n  ".join(words)


def _parse(trt: ModuleType, onnx_path: Path, logger: Any) -> tuple[Any, Any, Any]:
    builder = trt.Builder(logger)
    flag = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flag)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise SmoothrotError(f"TensorRT could not parse {onnx_path}: {'; '.join(errors)}")
    return builder, network, parser


def build_engine(
    trt: ModuleType, onnx_path: Path, dims: ModelDims, config: EngineConfig
) -> tuple[bytes, dict[str, Any]]:
    """Serialized engine bytes and what was built (layers, profiles, targets, seconds)."""
    logger = trt_logger(trt)
    start = time.perf_counter()
    builder, network, _parser = _parse(trt, onnx_path, logger)
    parsed = time.perf_counter() - start
    builder_config = builder.create_builder_config()
    profiles = [builder.create_optimization_profile() for _ in range(2)]
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    for tensor in inputs:
        shapes_per_profile = _profile_shapes(tensor.name, dims, config)
        for profile, shapes in zip(profiles, shapes_per_profile, strict=True):
            profile.set_shape(tensor.name, *shapes)
    for profile in profiles:
        builder_config.add_optimization_profile(profile)
    targets = _set_targets(trt, builder_config, config.compute_capabilities)
    log.info("building the engine (%d layers)", network.num_layers)
    blob = builder.build_serialized_network(network, builder_config)
    if blob is None:
        raise SmoothrotError(f"TensorRT failed to build an engine from {onnx_path}")
    return bytes(blob), {
        "layers": network.num_layers,
        "inputs": {t.name: str(t.dtype).split(".")[-1] for t in inputs},
        "profiles": {
            "prefill": {"tokens": [1, config.max_prompt], "cached": [0, 0]},
            "decode": {"tokens": [1, 1], "cached": [1, config.max_context - 1]},
        },
        "compute_capabilities": targets,
        "parse_seconds": round(parsed, 1),
        "build_seconds": round(time.perf_counter() - start - parsed, 1),
    }


def _set_targets(trt: ModuleType, builder_config: Any, ccs: tuple[int, ...]) -> list[str] | str:
    if not hasattr(builder_config, "set_compute_capability"):  # TensorRT: the GPU it runs on
        if ccs:
            raise SmoothrotError("--compute-capability is a TensorRT-RTX option")
        return "the GPU this build ran on"
    if not ccs:
        return "TensorRT-RTX default"
    builder_config.num_compute_capabilities = len(ccs)
    for index, cc in enumerate(ccs):
        builder_config.set_compute_capability(getattr(trt.ComputeCapability, f"SM{cc}"), index)
    return [f"sm_{cc}" for cc in ccs]


def check_engine_header(trt: ModuleType, blob: bytes) -> dict[str, Any]:
    """The runtime's engine validity API on ``blob``. Without a GPU a good engine reads
    INVALID with no diagnostic bit (nothing to run it on); a damaged or foreign one reads
    MALFORMED_ENGINE / VERSION_MISMATCH, which is what ``header_valid`` rules out."""
    runtime = trt.Runtime(trt_logger(trt))
    if not hasattr(runtime, "get_engine_validity"):  # TensorRT before 10.12
        return {
            "validity": "not checked (no validity API)",
            "diagnostics": [],
            "header_valid": None,
        }
    validity, bits = runtime.get_engine_validity(blob)
    members = trt.EngineInvalidityDiagnostics.__members__.items()
    diagnostics = [name for name, flag in members if int(bits) & int(flag)]
    return {
        "validity": str(validity).split(".")[-1],
        "diagnostics": diagnostics,
        "header_valid": not any(d in _HEADER_FAULTS for d in diagnostics),
    }
