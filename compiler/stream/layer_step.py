"""One decoder layer of a streamed compile: its segment through the compile's passes, fed and
measured on the residual streams the layers before it produced.

For layer ``k`` (every step on one layer's weights only):

1. the segment with layer ``k``'s fp32 weights; if the transform smooths or the result is
   evaluated, the *untransformed* layer runs on the untransformed streams (its MatMul inputs'
   abs-max for smoothing, and the fp reference of the evaluation);
2. the transform's exact passes; the transformed float layer runs on the calibration stream and
   gives the Hessian ``XᵀX`` of each MatMul input (and the exact stage's probe);
3. the recipe's lossy passes (GPTQ / AdaDim with those Hessians, activation and KV QDQ); the
   result is saved and runs on the evaluation stream and, in sequential calibration, on the
   quantized calibration stream that feeds layer ``k + 1``.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from smoothrot.compiler.modeldir.model_dir import save_model
from smoothrot.compiler.stream.assemble import SegmentFiles
from smoothrot.compiler.stream.runner import SegmentRunner, collect_statistics
from smoothrot.compiler.stream.segments import residual_names
from smoothrot.compiler.stream.streams import Streams
from smoothrot.core.manifest import ModelDims
from smoothrot.core.pass_infra import Pipeline
from smoothrot.passes.model_map import Linear, build_model_map

__all__ = ["LayerPasses", "StepOutcome", "run_layer"]

# (absmax lookup or None) -> exact passes; (hessian lookup) -> lossy passes
LayerPasses = tuple[
    Callable[[Callable[[Linear], np.ndarray] | None], list[ir.passes.PassBase]],
    Callable[[Callable[[Linear], np.ndarray]], list[ir.passes.PassBase]],
]


@dataclass
class StepOutcome:
    files: SegmentFiles
    details: dict[str, dict[str, Any]]  # pass name -> its report's details
    seconds: dict[str, float]


def _inputs(model: ir.Model, dims: ModelDims) -> dict[str, list[str]]:
    """MatMul input value → the weights of the layer's Linears that read it."""
    found: dict[str, list[str]] = {}
    for layer in build_model_map(model, dims).require().layers:
        for lin in layer.linears():
            assert lin.input.name is not None
            found.setdefault(lin.input.name, []).append(lin.name)
    return found


def _lookup(acc: dict[str, Any], inputs: dict[str, list[str]], field: str):
    """``fn(Linear) -> array`` over the statistics, in float32 as a calibration directory stores
    them (GPTQ is chaotic: a Hessian rounded otherwise rounds some weights otherwise)."""
    by_weight = {
        w: np.asarray(getattr(acc[x], field), np.float32) for x, ws in inputs.items() for w in ws
    }

    def get(lin: Linear) -> np.ndarray:
        return by_weight[lin.name]

    return get


def run_layer(
    segment: ir.Model,
    dims: ModelDims,
    passes: LayerPasses,
    streams: Streams,
    out: Path,
    scratch: Path,
    quantizes: bool,
) -> StepOutcome:
    """Process one layer segment (see module docstring); its result is saved in ``out`` and
    ``streams`` advanced past it. ``scratch`` holds the float copies while they run."""
    seconds: dict[str, float] = {}
    h = residual_names(segment, dims)
    exact_passes, lossy_passes = passes
    t = time.perf_counter()
    absmax = None
    if streams.needs_untransformed:
        fp = scratch / "fp"
        save_model(segment, _fresh(fp))
        inputs = _inputs(segment, dims)
        runner = SegmentRunner(fp, h[0], [h[1], *inputs], dims)
        streams.cal_u, acc = collect_statistics(
            runner, list(inputs), streams.cal_ids, streams.cal_u, h[1], False
        )
        absmax = _lookup(acc, inputs, "absmax")
        if streams.eval_u is not None:
            streams.eval_u = runner.stream(streams.eval_ids, streams.eval_u, h[1])
        del runner
        shutil.rmtree(fp)
    seconds["reference"] = time.perf_counter() - t
    t = time.perf_counter()
    details: dict[str, dict[str, Any]] = {}
    result = Pipeline(exact_passes(absmax))(segment)
    details |= {s.name: s.details for s in result.steps}
    seconds["exact"] = time.perf_counter() - t
    t = time.perf_counter()
    if quantizes or streams.probe_f is not None:
        fl = scratch / "float"
        save_model(segment, _fresh(fl))
        inputs = _inputs(segment, dims)
        source = streams.cal_q if streams.cal_q is not None else streams.cal
        runner = SegmentRunner(fl, h[0], [h[1], *inputs], dims)
        cal_f, acc = collect_statistics(
            runner, list(inputs), streams.cal_ids, source, h[1], quantizes
        )
        if streams.cal_q is None:
            streams.cal = cal_f
        if streams.probe_f is not None:
            streams.probe_f = runner.stream(streams.probe_ids, streams.probe_f, h[1])
        del runner  # its copy of the float weights, before GPTQ's working set
        shutil.rmtree(fl)
        seconds["calibrate"] = time.perf_counter() - t
        t = time.perf_counter()
        hessian = _lookup(acc, inputs, "hessian") if quantizes else None
        del acc  # the float64 sums: the lookup holds the float32 Hessians GPTQ reads
        if hessian is not None:
            result = Pipeline(lossy_passes(hessian))(segment)
            details |= {s.name: s.details for s in result.steps}
        del hessian
        seconds["quantize"] = time.perf_counter() - t
    t = time.perf_counter()
    save_model(segment, _fresh(out))
    runner = SegmentRunner(out, h[0], [h[1]], dims)
    if not quantizes and streams.probe_f is None:
        streams.cal = runner.stream(streams.cal_ids, streams.cal, h[1])
    if streams.cal_q is not None:
        streams.cal_q = runner.stream(streams.cal_ids, streams.cal_q, h[1])
    if streams.eval_q is not None:
        streams.eval_q = runner.stream(streams.eval_ids, streams.eval_q, h[1])
    seconds["result"] = time.perf_counter() - t
    return StepOutcome(SegmentFiles(out, *h), details, seconds)


def _fresh(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path
