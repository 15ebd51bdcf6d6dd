"""Quality benchmark: fp32 vs ONNX Runtime's MatMulNBitsQuantizer vs our recipes, one run.

The default model is exported once; every row is evaluated by the same runner on the same text
(pydoc evaluation part, 8 windows x 512 tokens, EvalConfig defaults) at MatMulNBits accuracy
level 0 unless the row says otherwise. lm_head stays fp32 in every row (ours and the peer's).
KV rows are also evaluated with the chat system prompt before every window (scored tokens
unchanged) with P = 0 and P = the prompt length (BiSup), set at run time.

    python -m smoothrot.tools.bench_quality -o out/bench_quality [--onnx out/smollm2-fp32]
    python -m smoothrot.tools.bench_quality --model gemma3-270m --docs docs/quality-gemma3.md

Prints a markdown table (perplexity, ratio to fp32, size) and writes results.json;
``--docs docs/quality.md`` also writes the tables as a page of ``docs/`` (with the run's
environment, see ``bench_docs``) and the tuned w4a4 row's ``tune_loss.png`` beside it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from smoothrot.compiler.compile import compile_model
from smoothrot.compiler.config import CompileConfig, EvalConfig, ExportConfig, TuneConfig
from smoothrot.compiler.export.exporter import export_model
from smoothrot.compiler.measure.evaluate import evaluate_dir, system_prompt_ids
from smoothrot.compiler.measure.probes import model_bytes
from smoothrot.compiler.modeldir.sources import resolve_source
from smoothrot.compiler.recipes import Recipe, Transform
from smoothrot.compiler.runtime.ort_runner import load_tokenizer
from smoothrot.passes.quantize_weights import Algorithm, GroupingMode, WeightQuantConfig
from smoothrot.tools.bench_docs import command_line, write_doc
from smoothrot.tools.peer_ort import PeerAlgorithm, PeerConfig, quantize_with_ort

__all__ = ["ROWS", "Row", "docs_body", "main", "run", "write_docs"]


@dataclass(frozen=True)
class Row:
    name: str
    bits: str  # what is quantized, for "same bit widths" comparisons
    build: Callable[[Path, Path, Path], Path] | None  # (export, out, cache) -> model dir
    prompt_eval: bool = False  # also evaluate with the system prompt (P = 0 and P = prompt)


def _peer(algorithm: PeerAlgorithm, level: int):
    return lambda src, out, cache: quantize_with_ort(src, out, PeerConfig(algorithm, 128, level))


def _ours(
    recipe: str,
    transform: str,
    grouping: str,
    algorithm: str,
    tokens: int = 4096,
    tune: TuneConfig | None = None,
):
    weights = WeightQuantConfig(GroupingMode(grouping), 128, Algorithm(algorithm))
    config = CompileConfig(
        Recipe(recipe),
        Transform(transform),
        weights=weights,
        calibration_tokens=tokens,
        evaluate=False,
        tune=tune,
    )

    def build(src: Path, out: Path, cache: Path) -> Path:
        compile_model(out, config, onnx_dir=src, cache=cache)
        return out

    return build


ROWS: list[Row] = [
    Row("fp32", "fp32", None, prompt_eval=True),
    Row("ORT MatMulNBits RTN sym b128, acc 0", "w4a16", _peer(PeerAlgorithm.RTN, 0)),
    Row(
        "ORT MatMulNBits RTN sym b128, acc 4", "w4a8 (int8 act/block)", _peer(PeerAlgorithm.RTN, 4)
    ),
    Row(
        "ours w4a16 (recipe: GPTQ AdaDim, rotate)",
        "w4a16",
        _ours("w4a16", "rotate", "adadim", "gptq"),
    ),
    Row(
        "ours w4a8 (recipe: GPTQ AdaDim, rotate)", "w4a8", _ours("w4a8", "rotate", "adadim", "gptq")
    ),
    Row(
        "ours w4a4 (recipe: GPTQ AdaDim, hybrid-online)",
        "w4a4",
        _ours("w4a4", "hybrid-online", "adadim", "gptq"),
    ),
    Row(
        "ours w4a16 (recipe) + --tune (BiSup)",
        "w4a16",
        _ours("w4a16", "rotate", "adadim", "gptq", tune=TuneConfig()),
    ),
    Row(
        "ours w4a4 (recipe) + --tune (BiSup)",
        "w4a4",
        _ours("w4a4", "hybrid-online", "adadim", "gptq", tune=TuneConfig()),
    ),
    Row(
        "ours w4a4kv4 (recipe: GPTQ AdaDim, hybrid-online)",
        "w4a4kv4",
        _ours("w4a4kv4", "hybrid-online", "adadim", "gptq"),
        prompt_eval=True,
    ),
    Row("ours w4a16 RTN per-OC, rotate", "w4a16", _ours("w4a16", "rotate", "per-oc", "rtn")),
    Row("ours w4a8 RTN per-OC, rotate", "w4a8", _ours("w4a8", "rotate", "per-oc", "rtn")),
    Row(
        "ours w4a4 RTN per-OC, hybrid-online",
        "w4a4",
        _ours("w4a4", "hybrid-online", "per-oc", "rtn"),
    ),
    Row("ours w4a16 RTN per-IC, rotate", "w4a16", _ours("w4a16", "rotate", "per-ic", "rtn")),
    Row("ours w4a16 RTN AdaDim, rotate", "w4a16", _ours("w4a16", "rotate", "adadim", "rtn")),
    Row("ours w4a16 GPTQ per-OC, rotate", "w4a16", _ours("w4a16", "rotate", "per-oc", "gptq")),
    Row("ours w4a16 GPTQ per-IC, rotate", "w4a16", _ours("w4a16", "rotate", "per-ic", "gptq")),
    Row("ours w4a16 GPTQ AdaDim, none", "w4a16", _ours("w4a16", "none", "adadim", "gptq")),
    Row("ours w4a16 GPTQ AdaDim, smooth", "w4a16", _ours("w4a16", "smooth", "adadim", "gptq")),
    Row("ours w4a16 GPTQ AdaDim, hybrid", "w4a16", _ours("w4a16", "hybrid", "adadim", "gptq")),
    Row("ours w4a4 GPTQ AdaDim, rotate", "w4a4", _ours("w4a4", "rotate", "adadim", "gptq")),
    Row("ours w4a4 GPTQ AdaDim, hybrid (fused)", "w4a4", _ours("w4a4", "hybrid", "adadim", "gptq")),
    Row("ORT MatMulNBits HQQ b128 (asym), acc 0", "w4a16", _peer(PeerAlgorithm.HQQ, 0)),
]


def _measure(row: Row, model_dir: Path, eval_config: EvalConfig) -> dict[str, Any]:
    t = time.perf_counter()
    result: dict[str, Any] = {"row": row.name, "bits": row.bits}
    plain = evaluate_dir(model_dir, eval_config, progress=False)
    result.update(ppl=plain["ppl"], size_bytes=model_bytes(model_dir), bos=plain["bos"])
    if row.prompt_eval:
        prompt = len(system_prompt_ids(load_tokenizer(model_dir)))
        kv = row.bits.endswith("kv4")
        for p in (0, prompt) if kv else (None,):
            key = "ppl_prompt" if p is None else f"ppl_prompt_P{p}"
            prompted = replace(eval_config, system_prompt=True, kv_prefix=p)
            run = evaluate_dir(model_dir, prompted, progress=False)
            result[key] = run["ppl"]
        result["prompt_tokens"] = prompt
    result["eval_seconds"] = round(time.perf_counter() - t, 1)
    return result


def _table(results: list[dict[str, Any]]) -> str:
    fp = results[0]["ppl"]
    lines = [
        "| row | bits | perplexity | × fp32 | size MB | with system prompt |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        prompt = ", ".join(
            f"{k.removeprefix('ppl_prompt_').removeprefix('ppl_prompt') or 'fp'} {v:.3f}"
            for k, v in r.items()
            if k.startswith("ppl_prompt")
        )
        lines.append(
            f"| {r['row']} | {r['bits']} | {r['ppl']:.3f} | {r['ppl'] / fp:.3f} | "
            f"{r['size_bytes'] / 1e6:.0f} | {prompt} |"
        )
    return "\n".join(lines)


def run(
    out: Path,
    onnx_dir: Path | None,
    rows: list[Row],
    eval_config: EvalConfig,
    cache: Path | None = None,
    model_dirs: dict[str, Path] | None = None,
    model: str | None = None,
) -> list[dict]:
    """Build and evaluate ``rows`` of ``model`` (a source as ``--model`` names it; None: the
    default model); ``model_dirs``, if given, receives each row's model folder."""
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-quality-", dir=out))
    cache = cache or work / "cache"
    if onnx_dir is None:
        onnx_dir = work / "fp32"
        export_model(resolve_source(model), onnx_dir, ExportConfig())
    results = []
    for i, row in enumerate(rows):
        t = time.perf_counter()
        model_dir = onnx_dir if row.build is None else row.build(onnx_dir, work / f"row{i}", cache)
        if model_dirs is not None:
            model_dirs[row.name] = model_dir
        result = _measure(row, model_dir, eval_config)
        result["build_seconds"] = round(time.perf_counter() - t - result["eval_seconds"], 1)
        results.append(result)
        print(json.dumps(result), file=sys.stderr, flush=True)
        (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results


# Tuned rows: the untuned row they start from, and the name of their loss plot in docs/.
TUNED = {
    "ours w4a16 (recipe) + --tune (BiSup)": ("ours w4a16 (recipe: GPTQ AdaDim, rotate)", None),
    "ours w4a4 (recipe) + --tune (BiSup)": (
        "ours w4a4 (recipe: GPTQ AdaDim, hybrid-online)",
        "tune_loss_w4a4.png",
    ),
}
PROTOCOL = (
    "One run, one export of {model}, every row evaluated by the same runner on the "
    "same text and protocol (pydoc evaluation part, {windows} × {seq} tokens, accuracy level 0 "
    "unless the row says otherwise). Symmetric INT4, group 128 (64 where 128 does not divide); "
    "lm_head stays fp32 in every row, ours and the peer's. Calibration and `--tune` use the "
    "calibration part of the text, disjoint from the evaluation part."
)


def _tune_seconds(model_dir: Path | None) -> float | None:
    report = model_dir / "report.json" if model_dir else None
    if report is None or not report.is_file():
        return None
    stages = json.loads(report.read_text()).get("stages", [])
    return next((s["seconds"] for s in stages if s.get("stage") == "tune"), None)


def _tune_table(results: list[dict[str, Any]], model_dirs: dict[str, Path]) -> str:
    by = {r["row"]: r for r in results}
    fp = results[0]["ppl"]
    lines = [
        "| row | perplexity | × fp32 | gap to fp32 closed by `--tune` "
        "| tuning time (`tune` stage) |",
        "|---|---|---|---|---|",
    ]
    for name, (base, _) in TUNED.items():
        if name not in by or base not in by:
            continue
        tuned, untuned = by[name]["ppl"], by[base]["ppl"]
        closed = (untuned - tuned) / (untuned - fp) if untuned != fp else float("nan")
        seconds = _tune_seconds(model_dirs.get(name))
        lines.append(f"| {base} | {untuned:.3f} | {untuned / fp:.3f} | | |")
        lines.append(
            f"| {name} | {tuned:.3f} | {tuned / fp:.3f} | {closed:.1%} | "
            f"{'' if seconds is None else f'{seconds:.0f} s'} |"
        )
    return "\n".join(lines) if len(lines) > 2 else ""


def _plot_name(plot: str, model: str | None) -> str:
    """A plot's file name in docs/: one per model, so two models' pages never share one."""
    return plot if model is None else plot.replace(".png", f"_{model}.png")


def docs_body(
    results: list[dict[str, Any]],
    eval_config: EvalConfig,
    model_dirs: dict[str, Path],
    model: str | None = None,
) -> str:
    """The page ``--docs`` writes: protocol, the quality table, the ``--tune`` table."""
    name = "the default model" if model is None else model
    protocol = PROTOCOL.format(windows=eval_config.windows, seq=eval_config.seq, model=name)
    bos = results[0].get("bos")
    if bos is not None:
        protocol += f" BOS before every window: {'yes' if bos else 'no'} (as the tokenizer adds)."
    parts = [protocol, _table(results)]
    tune = _tune_table(results, model_dirs)
    if tune:
        parts += ["## BiSup tuning (`--tune`)", tune]
    for name, (_, plot) in TUNED.items():
        if plot and name in model_dirs and (model_dirs[name] / "tune_loss.png").is_file():
            parts.append(f"![tuning loss, {name}]({_plot_name(plot, model)})")
    return "\n\n".join(parts)


def write_docs(
    path: Path,
    command: str,
    results: list[dict[str, Any]],
    eval_config: EvalConfig,
    model_dirs: dict[str, Path],
    model: str | None = None,
) -> None:
    """Write the ``--docs`` page, and each tuned row's loss plot next to it."""
    for name, (_, plot) in TUNED.items():
        source = model_dirs[name] / "tune_loss.png" if name in model_dirs else None
        if plot and source and source.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, path.parent / _plot_name(plot, model))
    title = "Quality" if model is None else f"Quality: {model}"
    write_doc(path, title, command, docs_body(results, eval_config, model_dirs, model))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=Path("out/bench_quality"))
    parser.add_argument(
        "--model", help="the model, as smoothrot --model names it (default: SmolLM2)"
    )
    parser.add_argument("--onnx", type=Path, help="reuse an export of that model")
    parser.add_argument("--only", action="append", default=[], help="rows whose name contains this")
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument(
        "--cache",
        type=Path,
        help="reuse calibration statistics of an earlier run (same export, same smoothrot sources)",
    )
    parser.add_argument(
        "--docs",
        type=Path,
        help="also write the tables as this Markdown page (e.g. docs/quality.md)",
    )
    args = parser.parse_args(argv)
    rows = [ROWS[0]] + [r for r in ROWS[1:] if not args.only or any(s in r.name for s in args.only)]
    eval_config = EvalConfig(windows=args.windows)
    model_dirs: dict[str, Path] = {}
    results = run(args.output, args.onnx, rows, eval_config, args.cache, model_dirs, args.model)
    table = _table(results)
    (args.output / "results.md").write_text(table + "\n")
    if args.docs is not None:
        command = command_line("smoothrot.tools.bench_quality", argv)
        write_docs(args.docs, command, results, eval_config, model_dirs, args.model)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
