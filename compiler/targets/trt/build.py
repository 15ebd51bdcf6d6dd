"""``smoothrot build``: a compiled QDQ model → the graph TensorRT parses → a serialized engine.

Steps: ``TrtActivationQdqPass`` (run-time-scaled activation / KV QDQ as the arithmetic TensorRT
builds, exact), ``Fp16Pass`` (fp16 compute, fp32 norm statistics and rotary angles, fp32
logits), then parse and build with two optimization profiles (``compiler/targets/trt/engine.py``).
INT4 weights stay blocked DequantizeLinear on either axis (per-OC and per-IC), the form
TensorRT's ONNX parser takes; online Hadamard nodes are already Kronecker-factored MatMuls.

The output directory holds ``engine.trt``, the TensorRT-form ``model.onnx`` (ONNX Runtime runs
it too: the checks below), the tokenizer, the manifest and ``build.json`` / ``build.md``:

- **exactness** of the TensorRT rewrite in fp32 vs the QDQ graph (ONNX Runtime, graph as
  written), when a rewrite happened;
- **fp16 fidelity**: logits of the shipped graph vs the QDQ graph, greedy tokens equal for 32
  steps, and (``evaluate``) perplexity of both, on the evaluation text;
- sizes (QDQ ONNX, TensorRT ONNX, engine), build time, profiles, targets, and the engine
  validity API's verdict (a malformed or version-mismatched header fails the build).
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import onnx_ir as ir

from smoothrot.compiler.config import BuildConfig, check_plugin_backend
from smoothrot.compiler.measure.probes import logits_probe, model_bytes, perplexity_pair
from smoothrot.compiler.modeldir.model_dir import write_model_dir
from smoothrot.compiler.modeldir.model_graph import load_graph
from smoothrot.compiler.modeldir.outdir import check_output_dir, staged_output
from smoothrot.compiler.pipelines import build_pipeline
from smoothrot.compiler.reports.build_report import build_markdown, greedy_agreement
from smoothrot.compiler.stream.memory import refuse_unless_model_fits
from smoothrot.compiler.targets.ort.lower import COMPILE_REPORT_FILES
from smoothrot.compiler.targets.trt.engine import build_engine, check_engine_header, trtexec_command
from smoothrot.core.errors import SmoothrotError
from smoothrot.core.manifest import DType, load_manifest
from smoothrot.core.tensorrt import ENGINE_FILE, load_trt
from smoothrot.ortops.spec import DOMAIN as ORTOPS_DOMAIN
from smoothrot.passes.lower_ort import MS_DOMAIN
from smoothrot.plugins.trt_spec import NAMESPACE as PLUGIN_NAMESPACE

__all__ = ["build_model", "trt_graph"]


# The build holds the model about three times at once (the graph in memory, the TensorRT-form
# copy TensorRT's parser reads, the engine being built); a model that cannot fit is refused
# before any work.
BUILD_COPIES = 3

TRTEXEC_NOTE = (
    "The same engine from this directory's model.onnx, for a machine with TensorRT's trtexec "
    "(e.g. a Jetson: engines are not portable across GPUs or TensorRT versions)."
)


def trt_graph(
    source: Path, fp16: bool = True, plugins: bool = False
) -> tuple[ir.Model, dict[str, Any]]:
    """The TensorRT form of ``source``'s graph and what the passes did. With ``plugins``, INT4
    MatMuls (with their INT8 activation QDQ) and online rotations first become plugin nodes
    (``passes/lower_trt_plugins.py``), while the QDQ still has its fp32 meaning."""
    manifest = load_manifest(source)
    if manifest.dtype is not DType.FP32:
        raise SmoothrotError(
            f"{source} is a {manifest.dtype.value} model; build needs an fp32 compile"
        )
    model = load_graph(source, manifest)
    if any(n.domain in (MS_DOMAIN, ORTOPS_DOMAIN) for n in model.graph):
        raise SmoothrotError(
            f"{source} is lowered for ONNX Runtime (MatMulNBits or smoothrot.ort nodes); build "
            "from the QDQ model that `smoothrot compile --target qdq` writes"
        )
    result = build_pipeline(manifest.dims, fp16, plugins, (PLUGIN_NAMESPACE,))(model)
    info: dict[str, Any] = {}
    if plugins:
        lowering = result.details("lower_trt_plugins")
        info["plugins"] = dict(Counter(p.plugin.value for p in lowering["lowered"]))
        info["left_for_tensorrt"] = lowering["skipped"]
    info["qdq_rewritten"] = len(result.details("trt_activation_qdq")["rewritten"])
    if fp16:
        half = result.details("to_fp16")
        info.update(
            fp32_island_nodes=half["island_nodes"],
            saturated_constants=half["saturated"],
            raised_scalars=half["raised"],
        )
    int4 = [n for n in model.graph if n.op_type == "DequantizeLinear" and _int4(n)]
    info["int4_weights"] = {
        "per-oc": sum(n.attributes.get_int("axis", 1) == 0 for n in int4),
        "per-ic": sum(n.attributes.get_int("axis", 1) == 1 for n in int4),
    }
    return model, info


def _int4(node: ir.Node) -> bool:
    q = node.inputs[0]
    return q is not None and q.dtype == ir.DataType.INT4 and q.const_value is not None


def _write_graph(model: ir.Model, source: Path, out: Path, stage: dict, dtype: DType) -> None:
    manifest = load_manifest(source)
    write_model_dir(model, source, replace(manifest, dtype=dtype), out, [stage])


def _fidelity(source: Path, built: Path, work: Path, rewrites: int, config: BuildConfig) -> dict:
    checks: dict[str, Any] = {}
    if config.plugins:  # ONNX Runtime cannot run plugin nodes: check the same graph without
        (work / "fp16").mkdir()
        fp16, _ = trt_graph(source)
        _write_graph(fp16, source, work / "fp16", {"stage": "trt_form_fp16"}, DType.FP16)
        built = work / "fp16"
        checks["note"] = (
            "plugin nodes run only in the engine; these checks are of the same graph without "
            "them, and `smoothrot doctor --trt` compares each plugin with its reference"
        )
    if rewrites:
        fp32, _ = trt_graph(source, fp16=False)
        (work / "fp32").mkdir()
        _write_graph(fp32, source, work / "fp32", {"stage": "trt_form_fp32"}, DType.FP32)
        checks["exactness_fp32"] = logits_probe(source, work / "fp32", optimize=False)
    checks["fp16_vs_qdq"] = logits_probe(source, built, optimize=False)
    checks["greedy"] = greedy_agreement(source, built)
    if config.evaluate:
        checks["perplexity"] = perplexity_pair(source, built, ("qdq", "fp16"))
    return checks


def build_model(source: Path, out: Path, config: BuildConfig = BuildConfig()) -> dict[str, Any]:
    """Build ``source`` (a compiled QDQ model directory) into ``out`` (atomically) and report."""
    source, out = Path(source), Path(out)
    check_output_dir(out, inputs=[source])
    refuse_unless_model_fits(model_bytes(source), BUILD_COPIES, f"building {source}")
    backend, trt = load_trt(config.backend)
    if config.plugins:
        check_plugin_backend(backend, plugins=True)  # TensorRT-RTX was the importable one
        from smoothrot.plugins.trt_plugins import register_plugins

        register_plugins()
    start = time.perf_counter()
    model, info = trt_graph(source, plugins=config.plugins)
    dims = load_manifest(source).dims
    with staged_output(out, inputs=[source]) as staging:
        tmp, work = staging.out, staging.work
        stage = {"stage": "build_trt", "backend": backend.value, "version": trt.__version__}
        _write_graph(model, source, tmp, {**stage, **info}, DType.FP16)
        lowered = time.perf_counter() - start
        blob, engine = build_engine(trt, tmp / load_manifest(tmp).model_file, dims, config.engine)
        header = check_engine_header(trt, blob)
        if header["header_valid"] is False:
            raise SmoothrotError(f"the built engine fails the validity check: {header}")
        (tmp / ENGINE_FILE).write_bytes(blob)
        inputs = list(engine["inputs"])
        command = trtexec_command(inputs, dims, config.engine)
        (tmp / "trtexec.sh").write_text(f"#!/bin/sh\n# {TRTEXEC_NOTE}\n{command}\n")
        for name in COMPILE_REPORT_FILES:  # the compile report stays with the model it measured
            if (source / name).is_file():
                shutil.copy(source / name, tmp / name)
        report = {
            "backend": backend.value,
            "version": trt.__version__,
            "precision": "fp16 (fp32 norm statistics, rotary angles and logits), INT4 weights",
            "graph": info,
            "engine": {**engine, **header, "lower_seconds": round(lowered, 1)},
            "size_bytes": {
                "qdq_onnx": model_bytes(source),
                "trt_onnx": model_bytes(tmp),
                "engine": len(blob),
            },
            "checks": _fidelity(source, tmp, work, info["qdq_rewritten"], config),
        }
        (tmp / "build.json").write_text(json.dumps(report, indent=2) + "\n")
        (tmp / "build.md").write_text(build_markdown(report))
    return report
