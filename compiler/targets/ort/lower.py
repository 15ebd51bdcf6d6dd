"""``smoothrot lower`` (and ``compile --target ort``): a compiled QDQ model → ONNX Runtime's fast
CPU form, with a report that proves the lowering and measures what the shipped level costs.

``LowerToMatMulNBitsPass`` rewrites every INT4 QDQ MatMul (see ``passes/lower_ort.py``): per-OC
and per-IC layers become our own ONNX Runtime ops (``ortops/``, compiled where it runs on first
use; ``--per-oc matmulnbits`` / ``--per-ic split`` keep to ONNX Runtime's own ops, slower);
``LowerRotationPass`` turns each online Hadamard rotation (four Kronecker-factored nodes) into
one ``KroneckerRotation`` node of ours (``--rotation matmul`` keeps the four);
``LowerAttentionPass`` turns each layer's exported attention (repeated K/V heads, transposed K,
masked softmax: some 20 nodes and three copies of the cache per token) into one
``GroupedAttention`` node of ours (``--attention standard`` keeps them); activation / KV
QDQ stay standard ONNX nodes; ``NormDivPass`` puts the RMSNorms in the form ORT fuses.
The report (``lowering.json`` + ``lowering.md``) holds:

- **exactness**: logits of the lowering at accuracy level 0 vs the QDQ model (max |Δ|; the
  only differences are fp32 summation order);
- **the shipped level**: logits vs the QDQ model and perplexity of both (the QDQ model at level
  0, its meaning), so the quality a user gets is the quality reported;
- per-grouping layer counts, MatMulNBits block sizes, and every MatMul left as QDQ, by name.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir

from smoothrot.compiler.config import LowerConfig
from smoothrot.compiler.measure.probes import logits_probe, model_bytes, perplexity_pair
from smoothrot.compiler.modeldir.model_dir import write_model_dir, write_model_files
from smoothrot.compiler.modeldir.model_graph import load_graph
from smoothrot.compiler.modeldir.outdir import Staging, staged_output
from smoothrot.compiler.pipelines import lower_pipeline
from smoothrot.compiler.reports.compile_report import jsonable
from smoothrot.compiler.reports.lowering_report import lowering_markdown
from smoothrot.compiler.stream.memory import refuse_unless_model_fits
from smoothrot.core.errors import SmoothrotError
from smoothrot.core.manifest import MODEL_FILE, load_manifest
from smoothrot.core.pass_infra import PipelineResult
from smoothrot.ortops.library import library_path
from smoothrot.ortops.spec import OP_TYPE_ATTENTION, OP_TYPE_ROTATION
from smoothrot.ortops.spec import OP_TYPE_PER_IC as PER_IC_OP
from smoothrot.ortops.spec import OP_TYPE_PER_OC as PER_OC_OP
from smoothrot.passes.lower_ort import KERNEL_OPS

__all__ = ["lower_into", "lower_model"]

# The probes decode the last tokens one by one: the KV-cache path of the attention op is checked.
PROBE_DECODE_STEPS = 32
COMPILE_REPORT_FILES = ("report.json", "report.md", "report_layers.png")


@dataclass(frozen=True)
class _Lowering:
    """The lowered graph (None once written: the details stay, the weights go) and what each
    lowering pass did."""

    model: ir.Model | None
    layers: dict[str, Any]
    rotations: dict[str, Any]
    attention: dict[str, Any]

    @classmethod
    def of(cls, model: ir.Model, result: PipelineResult) -> _Lowering:
        return cls(
            model,
            {"lowered": [], "skipped": {}, **result.details("lower_int4")},
            {"lowered": 0, "skipped": {}, **result.details("lower_rotation")},
            {"lowered": 0, "skipped": {}, **result.details("lower_attention")},
        )


def _lowered_graph(source: Path, config: LowerConfig) -> _Lowering:
    manifest = load_manifest(source)
    model = load_graph(source, manifest)
    done = {n.op_type for n in model.graph} & {*KERNEL_OPS, OP_TYPE_ROTATION, OP_TYPE_ATTENTION}
    if done:
        raise SmoothrotError(f"{source} is already lowered (it has {sorted(done)} nodes)")
    lowered = _Lowering.of(model, lower_pipeline(config)(model))
    if not lowered.layers["lowered"]:
        raise SmoothrotError(
            f"{source} has no INT4 QDQ MatMul to lower; compile a w4* recipe first"
        )
    return lowered


def _ship_at_level(level0: Path, source: Path, out: Path, level: int, stage: dict[str, Any]):
    """The shipped model from the level-0 lowering: the same weights (its data file moved, not
    written again) with each INT4 kernel node's ``accuracy_level`` set to ``level``."""
    proto = onnx.load(str(level0 / MODEL_FILE), load_external_data=False)
    for node in proto.graph.node:
        if node.op_type in KERNEL_OPS:
            for attr in node.attribute:
                if attr.name == "accuracy_level":
                    attr.i = level
    data = f"{MODEL_FILE}.data"
    (level0 / data).rename(out / data)
    onnx.save(proto, str(out / MODEL_FILE))  # its external data stays where it points: ``data``
    write_model_files(source, load_manifest(source), out, [stage])


def _report(
    out: Path,
    source: Path,
    config: LowerConfig,
    lowered: _Lowering,
    exactness: dict[str, Any],
    stage: dict[str, Any],
) -> dict[str, Any]:
    lowering = lowered.layers
    counts = Counter(layer.grouping.value for layer in lowering["lowered"])
    report: dict[str, Any] = {
        "accuracy_level": config.accuracy_level,
        "per_ic_kernel": str(config.per_ic),
        "per_oc_kernel": str(config.per_oc),
        "rotation_kernel": str(config.rotation),
        "rotations": {
            "lowered": lowered.rotations["lowered"],
            "left_as_matmuls": lowered.rotations["skipped"],
        },
        "attention_kernel": str(config.attention),
        "attention": {
            "lowered": lowered.attention["lowered"],
            "left_as_exported": lowered.attention["skipped"],
        },
        "layers": {
            "lowered": len(lowering["lowered"]),
            "by_grouping": dict(counts),
            "kernel_nodes": stage["kernel_nodes"],
            "block_sizes": dict(Counter(layer.block_size for layer in lowering["lowered"])),
            "left_as_qdq": lowering["skipped"],
        },
        "exactness_level0": exactness,
        "shipped_vs_qdq": logits_probe(
            source, out, optimize=False, decode_steps=PROBE_DECODE_STEPS
        ),
        "size_bytes": {"qdq": model_bytes(source), "lowered": model_bytes(out)},
        "per_layer": jsonable(lowering["lowered"]),
    }
    if config.evaluate:  # the lowered graph's nodes carry the shipped level themselves
        report["perplexity"] = perplexity_pair(source, out, ("qdq_level0", "lowered"))
    (out / "lowering.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "lowering.md").write_text(lowering_markdown(report))
    return report


# Lowering an 8B-shaped w4a16 model (7.9 GB) was OOM-killed at 24.3 GB when every layer's
# unpacked weights were held and the graph was lowered twice, and peaked at 22.8 GB when its
# probes ran the QDQ graph in ONNX Runtime's default order (every weight dequantized at once).
# Now the weights are read one layer at a time, converted once, and the probes run the graphs as
# written in priority order: 10.7 GB. Two copies leave a margin; a model that cannot fit is
# refused before any work.
LOWER_COPIES = 2


def lower_model(source: Path, out: Path, config: LowerConfig = LowerConfig()) -> dict[str, Any]:
    """Lower the QDQ model directory ``source`` into ``out`` (atomically) and report."""
    with staged_output(out, inputs=[source]) as staging:
        refuse_unless_model_fits(model_bytes(Path(source)), LOWER_COPIES, f"lowering {source}")
        return lower_into(Path(source), staging, config)


def lower_into(source: Path, staging: Staging, config: LowerConfig) -> dict[str, Any]:
    """Lower ``source`` into ``staging.out`` (scratch in ``staging.work``) and report.

    The graph is lowered once, at level 0, and written to scratch: that model is the one the
    exactness probe runs; the shipped model is the same file of weights with the INT4 nodes'
    accuracy level set (:func:`_ship_at_level`), so the weights are converted and written once
    and the lowered graph is not held while ONNX Runtime runs the probes."""
    start = time.perf_counter()
    lowered = _lowered_graph(source, replace(config, accuracy_level=0))
    model, lowering = lowered.model, lowered.layers
    assert model is not None
    kernels = dict(Counter(n.op_type for n in model.graph if n.op_type in KERNEL_OPS))
    if (
        set(kernels) & {PER_IC_OP, PER_OC_OP}
        or lowered.rotations["lowered"]
        or lowered.attention["lowered"]
    ):
        library_path(build=True)  # fails here, in one line, if it cannot be built here
    stage = {
        "stage": "lower_ort",
        "seconds": 0.0,
        "accuracy_level": config.accuracy_level,
        "per_ic_kernel": str(config.per_ic),
        "per_oc_kernel": str(config.per_oc),
        "rotation_kernel": str(config.rotation),
        "rotations_lowered": lowered.rotations["lowered"],
        "attention_kernel": str(config.attention),
        "attention_lowered": lowered.attention["lowered"],
        "kernel_nodes": kernels,
        "lowered": len(lowering["lowered"]),
    }
    manifest = load_manifest(source)
    level0 = staging.work / "level0"
    level0.mkdir()
    write_model_dir(model, source, manifest, level0, [{**stage, "accuracy_level": 0}])
    lowered = replace(lowered, model=None)  # the graph is on disk: release its weights
    del model
    stage["seconds"] = round(time.perf_counter() - start, 1)
    exactness = logits_probe(source, level0, optimize=False, decode_steps=PROBE_DECODE_STEPS)
    dest = staging.out
    _ship_at_level(level0, source, dest, config.accuracy_level, stage)
    for name in COMPILE_REPORT_FILES:  # the compile report stays with the model it measured
        if (source / name).is_file():
            shutil.copy(source / name, dest / name)
    return _report(dest, source, config, lowered, exactness, stage)
