"""The report of a streamed compile: the same ``report.json`` / ``report.md`` as a whole-graph
compile, its measurements taken from the streams instead of two model directories.

The logits probe compares the result with the fp model on the first 128 tokens of the first
evaluation window (causal attention: the same logits as a 128-token input); the perplexities
are both models' on the evaluation windows (EvalConfig defaults), the fp reference computed
layer by layer beside the result. ``exact_stage`` is the float model after the exact transform
against the fp model: the exactness proof of a lossy recipe's transform at any size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from smoothrot.compiler.measure.probes import model_bytes
from smoothrot.compiler.modeldir.sources import ModelSource
from smoothrot.compiler.reports.compile_report import finish_report, report_head
from smoothrot.core.int4 import Grouping
from smoothrot.passes.quantize_weights import LayerQuantResult

__all__ = ["layer_results", "stream_report"]


def layer_results(details: list[dict[str, Any]]) -> list[LayerQuantResult]:
    """The INT4 results of every segment, in model order, back from their JSON."""
    out = []
    for segment in details:
        for r in segment.get("quantize_weights", {}).get("layers", []):
            out.append(
                LayerQuantResult(
                    weight=r["weight"],
                    grouping=Grouping(r["grouping"]),
                    block=r["block"],
                    errors={Grouping(k): v for k, v in r["errors"].items()},
                    snr_db=r["snr_db"],
                )
            )
    return out


def stream_report(
    result: Path,
    source: ModelSource,
    config: Any,
    stages: list[dict[str, Any]],
    details: list[dict[str, Any]],
    measures: dict[str, Any],
    checkpoint_bytes: int,
    estimate: int,
) -> dict[str, Any]:
    recipe = config.recipe
    report = report_head(config, checkpoint_bytes, model_bytes(result), stages)
    report |= {
        "stream": {
            "calibration": "sequential" if config.sequential else "float model",
            "peak_rss_mb": max((s.get("peak_rss_mb", 0.0) for s in stages), default=0.0),
            "estimate_bytes": estimate,
            "checkpoint_bytes": checkpoint_bytes,
            "source": source.describe(),
            "layer_seconds": measures.get("layer_seconds", {}),
        },
    }
    if "logits" in measures:
        report["logits"] = measures["logits"]
        if "exact_stage" in measures:
            report["exact_stage"] = measures["exact_stage"]
        if recipe.exact:
            lg = measures["logits"]
            report["exactness"] = {k: lg[k] for k in ("tokens", "max_abs_logit_diff")}
        else:
            p = measures["perplexity"]
            report["perplexity"] = {**p, "ratio": p["after"] / p["before"]}
    return finish_report(result, report, layer_results(details))
