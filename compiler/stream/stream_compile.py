"""``compile --model`` layer by layer: memory of one decoder layer, never the whole model.

1. the checkpoint is opened lazily and the peak memory estimated (refused if it cannot fit);
2. the decoder is traced once at depth 1 (``template.py``);
3. the head (embedding, final norm, lm_head) is transformed once and starts the streams;
4. each layer, in order, goes through ``layer_step.run_layer`` and is saved; the journal and the
   streams after it are written, so a killed compile resumes from the next layer;
5. lm_head is quantized on the final stream if asked, the evaluation streams end in logits
   (perplexity before/after, the logits probe and the exact stage's probe);
6. the saved segments are stamped into one model (``assemble.py``) with its manifest.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir
from tqdm import tqdm

from smoothrot.compiler.config import CompileConfig, EvalConfig
from smoothrot.compiler.config.common import MIN_OPSET
from smoothrot.compiler.export.exporter import model_dims, tool_versions
from smoothrot.compiler.export.wrapper import io_names
from smoothrot.compiler.measure.corpus import CorpusPart, corpus_part
from smoothrot.compiler.measure.perplexity import bos_prefix, windows
from smoothrot.compiler.measure.probes import compare_logits
from smoothrot.compiler.modeldir.model_dir import copy_licenses, save_tokenizer
from smoothrot.compiler.modeldir.outdir import RESUME_JOURNAL
from smoothrot.compiler.modeldir.sources import ModelSource, SourceKind
from smoothrot.compiler.modeldir.untrusted import load_tokenizer_safely
from smoothrot.compiler.pipelines import stream_passes
from smoothrot.compiler.reports.compile_report import jsonable
from smoothrot.compiler.stream.assemble import SegmentFiles, assemble, layer_name
from smoothrot.compiler.stream.checkpoint import open_checkpoint
from smoothrot.compiler.stream.head_step import (
    head_logits,
    quantize_head,
    start_streams,
    transform_head,
)
from smoothrot.compiler.stream.journal import Journal, source_identity
from smoothrot.compiler.stream.layer_step import run_layer
from smoothrot.compiler.stream.memory import (
    check_fits,
    peak_rss_mb,
    release_freed_memory,
    reset_peak_rss,
)
from smoothrot.compiler.stream.segments import head_dims, head_model, layer_segment
from smoothrot.compiler.stream.stream_report import stream_report
from smoothrot.compiler.stream.streams import Streams
from smoothrot.compiler.stream.template import trace_template
from smoothrot.core.config_io import config_to_dict
from smoothrot.core.errors import SmoothrotError
from smoothrot.core.manifest import MODEL_FILE, DType, Manifest
from smoothrot.core.pass_infra import fault_point
from smoothrot.passes.quantize_weights import check_group_sizes

__all__ = ["stream_compile"]

log = logging.getLogger("smoothrot.stream")
CALIBRATION_SEQ = 512
PROBE_TOKENS = 128


class _Stages:
    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        reset_peak_rss()
        t = time.perf_counter()
        yield
        seconds = round(time.perf_counter() - t, 2)
        self.rows.append({"stage": name, "seconds": seconds, "peak_rss_mb": peak_rss_mb()})


def _tokenizer(source: ModelSource):  # noqa: ANN202 - a transformers tokenizer
    if source.kind is SourceKind.HF_DIR:
        return load_tokenizer_safely(source.path)
    return load_tokenizer_safely(source.path.parent, gguf_file=source.path.name)


def _token_ids(tokenizer, config: CompileConfig, vocab: int, evaluate: bool):  # noqa: ANN001
    text = corpus_part(CorpusPart.CALIBRATION)
    ids = tokenizer.encode(text, add_special_tokens=False)
    count = config.calibration_tokens // CALIBRATION_SEQ
    if len(ids) < count * CALIBRATION_SEQ:
        raise SmoothrotError(f"calibration text too short: {len(ids)} tokens")
    cal = np.asarray(ids[: count * CALIBRATION_SEQ], np.int64).reshape(count, CALIBRATION_SEQ)
    result = {"cal": cal}
    if evaluate:
        text = corpus_part(CorpusPart.EVALUATION)
        rows = windows(tokenizer.encode(text, add_special_tokens=False), EvalConfig())
        bos = np.asarray(bos_prefix(tokenizer), np.int64)
        result["eval"] = np.concatenate([np.tile(bos, (rows.shape[0], 1)), rows], axis=1)
        result["probe"] = np.asarray([tokenizer.encode(text[:4000])[:PROBE_TOKENS]], np.int64)
    top = max(int(a.max()) for a in result.values())
    if top >= vocab:
        raise SmoothrotError(f"the tokenizer produces id {top}, beyond the model's vocab {vocab}")
    return result


def stream_compile(
    source: ModelSource, config: CompileConfig, result: Path, work: Path
) -> dict[str, Any]:
    """Compile ``source`` into the model directory ``result`` with scratch and journal in
    ``work`` (the journal at ``work.parent / resume.json``); returns the compile report."""
    rows: list[dict[str, Any]] = []
    stage = _Stages(rows)
    spec = config.recipe.spec
    journal = Journal.open(
        work.parent / RESUME_JOURNAL, config_to_dict(config), source_identity(source.path)
    )
    with open_checkpoint(source, config.allow_pickle) as ckpt:
        dims = model_dims(ckpt.config)
        if spec.weights:
            check_group_sizes(dims, config.weights)
        tokenizer = _tokenizer(source)
        ids = _token_ids(tokenizer, config, dims.vocab, config.evaluate)
        stream_tokens = sum(a.size for a in ids.values()) * (3 if config.evaluate else 2)
        estimate = check_fits(dims, ckpt.tied, stream_tokens)
        save_tokenizer(tokenizer, result)
        copy_licenses(source.licenses, result)
        with stage("trace"):
            template = trace_template(ckpt.config, MIN_OPSET)
        seg_dims, hd = template.segment_dims, head_dims(dims)
        with stage("head"):
            head = head_model(template, ckpt)
            exact, lossy = stream_passes(config, hd, head=True)
            keep_fp = config.evaluate or config.transform_used.smooths
            files, head_details = transform_head(head, hd, exact(None), work, keep_fp)
            del head  # on disk from here on: the layers' step never holds the model's ends
            release_freed_memory()
        streams_file = work / "streams.npz"
        if journal.layers and streams_file.is_file():
            streams = Streams.load(streams_file)
        else:
            journal.layers = []
            streams = _start(files, hd, ids, config)
            release_freed_memory()  # the head's session
        layer_passes = stream_passes(config, seg_dims, head=False)
        done = len(journal.layers)
        bar = tqdm(total=dims.layers, initial=done, desc="compile layers", unit="layer")
        with stage("layers"), bar:
            for k in range(len(journal.layers), dims.layers):
                fault_point(f"layer.{k}")
                segment = layer_segment(template, ckpt, k)
                out = work / "layers" / f"{k:04d}"
                step = run_layer(
                    segment, seg_dims, layer_passes, streams, out, work / "scratch", spec.weights
                )
                del segment
                release_freed_memory()
                streams.save(streams_file)
                journal.layers.append(
                    {"h_in": step.files.h_in, "h_out": step.files.h_out, "seconds": step.seconds,
                     "details": _layer_details(step.details, k)}
                )  # fmt: skip
                journal.save()
                bar.update(1)
        if config.weights.lm_head and spec.weights:
            with stage("lm_head"):
                head = ir.load(str(files.float / MODEL_FILE))
                files, more = quantize_head(
                    head, files, hd, lossy, streams.cal_ids, streams.cal, work
                )
                head_details |= more
                del head
    measures: dict[str, Any] = {}
    if config.evaluate:
        with stage("evaluate"):
            measures = _evaluate(files, hd, streams, spec.weights)
    with stage("assemble"):
        layers = [
            SegmentFiles(work / "layers" / f"{k:04d}", e["h_in"], e["h_out"])
            for k, e in enumerate(journal.layers)
        ]
        assemble(layers, SegmentFiles(files.result, files.h, files.h), result)
    _manifest(source, dims, template.weights, rows).save(result)
    details = [e["details"] for e in journal.layers] + [jsonable(head_details)]
    per_step: dict[str, float] = {}
    for entry in journal.layers:
        for name, seconds in entry["seconds"].items():
            per_step[name] = round(per_step.get(name, 0.0) + seconds, 2)
    measures["layer_seconds"] = per_step
    return stream_report(result, source, config, rows, details, measures, ckpt.nbytes, estimate)


def _start(files, hd, ids: dict[str, np.ndarray], config: CompileConfig) -> Streams:
    lossy_eval = config.evaluate and config.recipe.spec.weights
    wanted = [ids["cal"]] + ([ids["eval"]] if config.evaluate else [])
    probe = [ids["probe"]] if lossy_eval else []
    cal, *rest = start_streams(files.float, files.h, hd, *wanted, *probe)
    streams = Streams(ids["cal"], cal)
    if config.sequential:
        streams.cal_q = cal.copy()
    if config.evaluate:
        streams.eval_ids, streams.probe_ids = ids["eval"], ids["probe"]
        streams.eval_q = rest[0]
        streams.probe_f = rest[1] if lossy_eval else None
    if config.transform_used.smooths or config.evaluate:
        assert files.fp is not None
        streams.cal_u, *fp_rest = start_streams(files.fp, files.h, hd, *wanted)
        streams.eval_u = fp_rest[0] if config.evaluate else None
    return streams


def _evaluate(files, hd, streams: Streams, lossy: bool) -> dict[str, Any]:
    assert streams.eval_ids is not None and files.fp is not None
    skip = streams.eval_ids.shape[1] - EvalConfig().seq  # a BOS before every window
    n = streams.eval_ids.shape[0] * (EvalConfig().seq - 1)
    nll_u, ref = head_logits(files.fp, files.h, hd, streams.eval_u, streams.eval_ids, skip)
    nll_q, ours = head_logits(files.result, files.h, hd, streams.eval_q, streams.eval_ids, skip)
    measures: dict[str, Any] = {
        "perplexity": {"before": float(np.exp(nll_u / n)), "after": float(np.exp(nll_q / n)),
                       "tokens": n, "text": "pydoc_data evaluation part"},
        "logits": compare_logits(ref[:PROBE_TOKENS], ours[:PROBE_TOKENS]),
    }  # fmt: skip
    if lossy and streams.probe_f is not None and streams.probe_ids is not None:
        _, exact = head_logits(files.float, files.h, hd, streams.probe_f, streams.probe_ids)
        measures["exact_stage"] = compare_logits(ref[:PROBE_TOKENS], exact[:PROBE_TOKENS])
    return measures


def _layer_details(details: dict[str, dict[str, Any]], k: int) -> dict[str, Any]:
    """A layer's pass details as JSON, its weight names those of layer ``k`` of the model."""
    out = jsonable(details)
    for entry in out.get("quantize_weights", {}).get("layers", []):
        entry["weight"] = layer_name(entry["weight"], k)
    return out


def _manifest(source: ModelSource, dims, layer0: dict[str, str], rows) -> Manifest:
    weights = {}
    for k in range(dims.layers):
        for module, init in layer0.items():
            if module.startswith("model.layers.0."):
                weights[layer_name(module, k)] = layer_name(init, k)
    weights["lm_head"] = layer0["lm_head"]
    inputs, outputs = io_names(dims.layers)
    return Manifest(
        source=source.describe(),
        architecture=source.architecture,
        dims=dims,
        opset=MIN_OPSET,
        dtype=DType.FP32,
        inputs=inputs,
        outputs=outputs,
        versions=tool_versions(),
        weights=weights,
        stages=rows,
    )
