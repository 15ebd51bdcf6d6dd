"""The compile report written next to the model: ``report.json`` (machine) + ``report.md`` (people).

What it proves or measures: logits of the result vs the input model on a fixed 128-token
input (max |Δ| — the exactness proof for exact recipes — and SNR in dB), perplexity before and
after for lossy recipes (EvalConfig defaults), per-layer INT4 grouping and calibration SNR,
model size on disk, and the time of every stage. The plot (``report_layers.png``) shows the
per-layer SNR and, for AdaDim, per-OC vs per-IC calibration error.
"""

from __future__ import annotations

import enum
import json
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np

from smoothrot.compiler.measure.probes import logits_probe, model_bytes, perplexity_pair
from smoothrot.core.int4 import Grouping

__all__ = ["finish_report", "jsonable", "report_head", "transform_notes", "write_report"]


def jsonable(value: Any) -> Any:
    """Dataclasses, enums, tuples and numpy scalars as plain JSON values."""
    if is_dataclass(value) and not isinstance(value, type):
        return {k: jsonable(v) for k, v in asdict(value).items()}
    if isinstance(value, dict):
        return {str(jsonable(k)): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_report(
    result: Path,
    source: Path,
    config: Any,
    stages: list[dict[str, Any]],
    layers: list[Any],
    tune: dict[str, Any] | None = None,
    notes: list[str] | None = None,
) -> dict[str, Any]:
    """Measure ``result`` against ``source`` and write report.json/.md (+ plot) into ``result``;
    ``notes``: what the transform did otherwise than its name says (:func:`transform_notes`)."""
    recipe = config.recipe
    report = report_head(config, model_bytes(source), model_bytes(result), stages)
    if notes:
        report["notes"] = notes
    report["logits"] = logits_probe(source, result)
    if tune is not None:
        report["tune"] = tune
    if recipe.exact:
        report["exactness"] = {k: report["logits"][k] for k in ("tokens", "max_abs_logit_diff")}
    elif config.evaluate:
        report["perplexity"] = perplexity_pair(source, result, ("before", "after"))
    return finish_report(result, report, layers)


def transform_notes(result: Any) -> list[str]:
    """Where a pipeline's exact steps did something else than their names say (a
    ``PipelineResult``): the fused residual rotation blocked by a post-norm."""
    blocked = result.details("residual_rotation").get("r1_blocked")
    if not blocked:
        return []
    return [
        f"Fused residual rotation (R1) not applied: {blocked}. Per-head R2 is fused; q/k/v and "
        "gate/up inputs are rotated online instead."
    ]


def report_head(
    config: Any, input_bytes: int, output_bytes: int, stages: list[dict[str, Any]]
) -> dict[str, Any]:
    """What every compile report starts with: the recipe, transform, config, sizes, stages."""
    return {
        "recipe": config.recipe.value,
        "transform": config.transform_used.value,
        "config": jsonable(config),
        "size_bytes": {"input": input_bytes, "output": output_bytes},
        "stages": stages,
    }


def finish_report(result: Path, report: dict[str, Any], layers: list[Any]) -> dict[str, Any]:
    """Add the per-layer INT4 results (``LayerQuantResult``s) and write report.json/.md and the
    layer plot into ``result``."""
    if layers:
        report["layers"] = jsonable(layers)
        counts: dict[str, int] = {}
        for layer in layers:
            counts[layer.grouping.value] = counts.get(layer.grouping.value, 0) + 1
        report["grouping_counts"] = counts
        _plot_layers(result / "report_layers.png", layers)
    (result / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (result / "report.md").write_text(_markdown(report))
    return report


def _plot_layers(path: Path, layers: list[Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(layers))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 6), sharex=True)
    colors = ["tab:blue" if lay.grouping is Grouping.PER_OC else "tab:orange" for lay in layers]
    top.bar(x, [lay.snr_db for lay in layers], color=colors)
    top.set_ylabel("calibration output SNR (dB)")
    top.set_title("INT4 weights per layer (blue: per-OC, orange: per-IC)")
    both = [lay for lay in layers if len(lay.errors) == 2]
    if both:
        per_ic, per_oc = Grouping.PER_IC, Grouping.PER_OC
        ratio = [lay.errors[per_ic] / max(lay.errors[per_oc], 1e-30) for lay in layers]
        bottom.semilogy(x, ratio, ".", color="tab:gray")
        bottom.axhline(1.0, color="k", lw=0.5)
        bottom.set_ylabel("per-IC / per-OC error")
    bottom.set_xlabel("layer (q,k,v,o,gate,up,down per decoder layer, in order)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _markdown(r: dict[str, Any]) -> str:
    lines = [f"# smoothrot compile report: {r['recipe']} (transform {r['transform']})", ""]
    lg = r.get("logits")
    if lg is None:
        lines += ["Not evaluated (`--no-eval`): no logits or perplexity measured.", ""]
    else:
        lines += [
            f"Logits vs the input model on {lg['tokens']} tokens: "
            f"max |Δ| {lg['max_abs_logit_diff']:.3g},"
            f" SNR {lg['logit_snr_db']:.1f} dB, top-1 agreement {lg['top1_agreement']:.1%}.",
            "",
        ]
    lines += [f"Note: {note}" for note in r.get("notes", [])] + ([""] if r.get("notes") else [])
    if "exact_stage" in r:
        e = r["exact_stage"]
        lines += [
            f"Exact stage (the transform before quantization) vs the input model: max |Δ logits| "
            f"{e['max_abs_logit_diff']:.3g} on {e['tokens']} tokens.",
            "",
        ]
    if "stream" in r:
        st = r["stream"]
        lines += [
            f"Compiled layer by layer ({st['calibration']} calibration): peak RSS "
            f"{st['peak_rss_mb'] / 1024:.2f} GB (estimated up front "
            f"{st['estimate_bytes'] / 2**30:.2f} GB), checkpoint {st['checkpoint_bytes'] / 1e9:.2f}"
            " GB.",
            "",
        ]
    if "perplexity" in r:
        p = r["perplexity"]
        lines += [
            "| perplexity | value |",
            "|---|---|",
            f"| before (input model) | {p['before']:.3f} |",
            f"| after | {p['after']:.3f} |",
            f"| ratio | {p['ratio']:.3f} |",
            "",
            f"({p['tokens']} predicted tokens of the {p['text']}.)",
            "",
        ]
    if "tune" in r:
        t = r["tune"]
        lines += [
            f"Tuned (BiSup, `--tune`): {t['kept']} of {t['blocks']} blocks kept their tuned "
            f"constants; last block's output error {t['loss_untuned_last_block']:.3e} untuned → "
            f"{t['loss_tuned_last_block']:.3e} tuned; see tune.md.",
            "",
        ]
    size = r["size_bytes"]
    lines += [f"Model on disk: {size['input'] / 1e6:.1f} MB → {size['output'] / 1e6:.1f} MB.", ""]
    if "layers" in r:
        lines += [f"Grouping chosen: {r['grouping_counts']}.", "", "![layers](report_layers.png)"]
        lines += ["", "| weight | grouping | group | SNR dB | errors |", "|---|---|---|---|---|"]
        for lay in r["layers"]:
            errs = ", ".join(f"{k} {v:.3g}" for k, v in lay["errors"].items())
            lines.append(
                f"| {lay['weight']} | {lay['grouping']} | {lay['block']} | {lay['snr_db']:.1f}"
                f" | {errs} |"
            )
        lines.append("")
    lines += ["| stage | seconds | peak RSS MB |", "|---|---|---|"]
    lines += [
        f"| {s['stage']} | {s['seconds']} | {s.get('peak_rss_mb', '')} |" for s in r["stages"]
    ]
    return "\n".join(lines) + "\n"
