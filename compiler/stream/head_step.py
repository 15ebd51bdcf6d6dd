"""The model's ends in a streamed compile: the head (embedding, final norm, lm_head) transformed
once, the streams started from it, and the logits the evaluation streams end in.

``HeadFiles`` names the saved heads: ``fp`` (untransformed: the fp reference), ``float``
(transformed, lm_head still float: the exact stage) and ``result`` (lm_head quantized with
``--quantize-lm-head``, else the same directory as ``float``).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from smoothrot.compiler.measure.perplexity import window_nll
from smoothrot.compiler.modeldir.model_dir import save_model
from smoothrot.compiler.stream.runner import SegmentRunner, collect_statistics
from smoothrot.compiler.stream.segments import residual_names
from smoothrot.core.manifest import ModelDims
from smoothrot.core.pass_infra import Pipeline
from smoothrot.passes.model_map import Linear, build_model_map

__all__ = ["HeadFiles", "head_logits", "quantize_head", "start_streams", "transform_head"]


@dataclass(frozen=True)
class HeadFiles:
    h: str  # the residual value the final norm reads (= the embedding's output in the head)
    fp: Path | None
    float: Path
    result: Path


def _save(model: ir.Model, path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    save_model(model, path)
    return path


def transform_head(
    head: ir.Model, dims: ModelDims, exact: list[ir.passes.PassBase], work: Path, keep_fp: bool
) -> tuple[HeadFiles, dict[str, Any]]:
    """Save the untransformed head (if ``keep_fp``), run the exact steps, save the result."""
    h = residual_names(head, dims)[1]
    fp = _save(head, work / "head-fp") if keep_fp else None
    result = Pipeline(exact)(head)
    path = _save(head, work / "head-float")
    return HeadFiles(h, fp, path, path), {s.name: s.details for s in result.steps}


def start_streams(directory: Path, h: str, dims: ModelDims, *ids: np.ndarray) -> list[np.ndarray]:
    """The residual stream entering the first layer for each array of token ids ``[n, seq]``
    (one session over the head for all of them)."""
    runner = SegmentRunner(directory, None, [h], dims)
    return [runner.stream(part, None, h) for part in ids]


def quantize_head(
    head: ir.Model, files: HeadFiles, dims: ModelDims, lossy, cal_ids, cal, work: Path
) -> tuple[HeadFiles, dict[str, Any]]:
    """lm_head quantized on the Hessian of its input over the final calibration stream."""
    lm_head = build_model_map(head, dims).require().lm_head
    assert lm_head is not None and lm_head.input.name is not None
    x_name = lm_head.input.name
    runner = SegmentRunner(files.float, files.h, [x_name], dims)
    _, acc = collect_statistics(runner, [x_name], cal_ids, cal, x_name, True)
    del runner

    h32 = np.asarray(acc[x_name].hessian, np.float32)  # as a calibration directory stores it

    def hessian(lin: Linear) -> np.ndarray:
        return h32

    result = Pipeline(lossy(hessian))(head)
    path = _save(head, work / "head-result")
    details = {s.name: s.details for s in result.steps}
    return HeadFiles(files.h, files.fp, files.float, path), details


def head_logits(
    directory: Path, h: str, dims: ModelDims, hidden: np.ndarray, ids: np.ndarray, skip: int = 0
):
    """(summed NLL of every window, logits of the first window) from the final streams; the
    first ``skip`` positions of each window (a BOS) are context only."""
    runner = SegmentRunner(directory, h, ["logits"], dims)
    total, first = 0.0, None
    for i in range(ids.shape[0]):
        logits = runner.run(ids[i], hidden[i])["logits"]
        total += window_nll(logits[skip:], ids[i][skip:])
        if first is None:
            first = logits
    return total, first
