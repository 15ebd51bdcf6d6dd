"""``smoothrot compile``: an export (or a model, exported first) → the recipe's INT4 QDQ model.

1. check the output directory and the group size before any slow work;
2. from ``--model`` (unless ``--stream off`` or a step needs the whole graph): compile it layer
   by layer straight from the checkpoint (``compiler/stream/``) and skip 3–4; otherwise export
   the model if no export is given;
3. run the compile pipeline (``compiler/pipelines.py``: calibration, the exact transform, the
   lossy passes, BiSup tuning) on the export's graph;
4. write the model directory atomically with its proof and measurements: logits vs the input
   model on a fixed 128-token input (max |Δ| and SNR), perplexity before/after for lossy recipes
   (``report.json`` + ``report.md``; ``tune.md`` after tuning);
5. with ``target`` ORT, lower that result for ONNX Runtime into the output instead
   (``compiler/targets/ort/lower.py``; the QDQ model stays in the work directory).
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import onnx_ir as ir

from smoothrot.compiler.calibrate.store import statistics_store
from smoothrot.compiler.config import CompileConfig, ExportConfig, StreamMode, Target
from smoothrot.compiler.export.exporter import export_model
from smoothrot.compiler.modeldir.model_dir import save_model, write_model_dir
from smoothrot.compiler.modeldir.model_graph import load_graph
from smoothrot.compiler.modeldir.outdir import staged_output
from smoothrot.compiler.modeldir.sources import resolve_source
from smoothrot.compiler.pipelines import compile_pipeline
from smoothrot.compiler.reports.compile_report import transform_notes, write_report
from smoothrot.compiler.reports.tune_report import write_tune_report
from smoothrot.compiler.stream.checkpoint import why_not_streamed
from smoothrot.compiler.stream.stream_compile import stream_compile
from smoothrot.compiler.targets.ort.lower import lower_into
from smoothrot.core.errors import SmoothrotError
from smoothrot.core.manifest import load_manifest
from smoothrot.passes.quantize_weights import check_group_sizes

__all__ = ["compile_model"]

log = logging.getLogger("smoothrot.compile")


def compile_model(
    out: Path,
    config: CompileConfig,
    model: str | None = None,
    onnx_dir: Path | None = None,
    cache: Path | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Compile to ``out`` (atomically) and return the compile report (with ``lowering``, the
    lowering report, for ``Target.ORT``). ``cache``: a directory where calibration statistics are
    kept and reused by later compiles of the same input and transform (benchmarks). A streamed
    compile (``config.streams``) that is killed keeps its finished layers; ``resume`` goes on
    from them."""
    source = resolve_source(model) if onnx_dir is None else None
    inputs = [onnx_dir] if onnx_dir is not None else [source.path] if source else []
    streams = config.streams(from_model=source is not None)
    if source is not None and streams and (why := why_not_streamed(source.architecture)):
        if config.stream is StreamMode.ON or config.sequential:
            flag = "--stream on" if config.stream is StreamMode.ON else "--calibration sequential"
            raise SmoothrotError(f"{flag}: {why}")
        log.info("compiling the whole graph: %s", why)
        streams = False
    if streams:
        assert source is not None
        with staged_output(Path(out), inputs=inputs, resumable=True, resume=resume) as staging:
            qdq = staging.out if config.target is Target.QDQ else staging.work / "qdq"
            qdq.mkdir(exist_ok=True)
            report = stream_compile(source, config, qdq, staging.work)
            if config.target is Target.ORT:
                lowering = replace(config.lowering, evaluate=config.evaluate)
                report["lowering"] = lower_into(qdq, staging, lowering)
        return report
    if resume:
        raise SmoothrotError("--resume continues a streamed compile (--model, --stream on/auto)")
    with staged_output(Path(out), inputs=inputs) as staging:
        work = staging.work
        rows: list[dict[str, Any]] = []
        if onnx_dir is None:
            onnx_dir = work / "export"
            start = time.perf_counter()
            export = ExportConfig(allow_pickle=config.allow_pickle)
            assert source is not None
            export_model(source, onnx_dir, export)
            rows.append({"stage": "export", "seconds": round(time.perf_counter() - start, 2)})
        manifest = load_manifest(onnx_dir)
        if config.recipe.spec.weights:  # refuse a group size that fits no layer, before work
            check_group_sizes(manifest.dims, config.weights)
        store = statistics_store(Path(cache), onnx_dir) if cache is not None else work
        dumps = work / "dumps"

        def dump(name: str, graph: ir.Model) -> None:
            if name in config.dump_after:
                (dumps / name).mkdir(parents=True)
                save_model(graph, dumps / name)

        graph = load_graph(onnx_dir, manifest)
        result = compile_pipeline(config, manifest, onnx_dir, store, work, dump)(graph)
        rows += [step.stage_row() for step in result.steps]
        qdq = staging.out if config.target is Target.QDQ else work / "qdq"
        qdq.mkdir(exist_ok=True)
        write_model_dir(graph, onnx_dir, manifest, qdq, rows)
        if dumps.exists():
            shutil.copytree(dumps, qdq / "dumps")
        layers = result.details("quantize_weights").get("layers", [])
        tuning = result.details("tune").get("tuning")
        tune_summary = write_tune_report(qdq, tuning) if tuning is not None else None
        notes = transform_notes(result)
        report = write_report(qdq, onnx_dir, config, rows, layers, tune_summary, notes)
        if config.target is Target.ORT:
            lowering = replace(config.lowering, evaluate=config.evaluate)
            report["lowering"] = lower_into(qdq, staging, lowering)
    return report
