"""The ``smoothrot`` command line: a thin layer over the Python API (no logic here).

Every flag maps to one config field. Exit status: 0 on success; 2 for a user mistake or an
expected failure (a bad option or input, the operating system, a file a library cannot read:
``cli_errors.describe``), printed as one line ``smoothrot: error: …``; 130 on SIGINT, 143 on
SIGTERM, 129 on SIGHUP (after cleaning up, one line); 1 for a bug in smoothrot (one line, the
traceback with ``-v``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from smoothrot.compiler.config import (
    AnalyzeConfig,
    CalibrationConfig,
    EvalConfig,
    ExportConfig,
    GenerateConfig,
)
from smoothrot.tools.cli_build import add_build
from smoothrot.tools.cli_compile import add_compile
from smoothrot.tools.cli_config import add_config_flags
from smoothrot.tools.cli_deploy import add_bench, add_lower
from smoothrot.tools.cli_doctor import add_doctor
from smoothrot.tools.cli_errors import OneLineParser, run_guarded

__all__ = ["main"]


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="trace a HF model to one ONNX decoder graph with KV cache")
    p.add_argument(
        "--model", help="HF model directory or .gguf file (default: packaged SmolLM2-135M)"
    )
    p.add_argument("-o", "--output", required=True, type=Path, help="output directory")
    p.set_defaults(run=_run_export, flags=add_config_flags(p, "export", ExportConfig))


def _run_export(args: argparse.Namespace) -> int:
    from smoothrot.compiler.export.exporter import export_model
    from smoothrot.compiler.modeldir.sources import resolve_source

    manifest = export_model(resolve_source(args.model), args.output, args.flags.config(args))
    d = manifest.dims
    print(
        f"exported {manifest.architecture} ({d.layers} layers, hidden {d.hidden}, "
        f"{manifest.dtype.value}, opset {manifest.opset}) to {args.output} "
        f"in {manifest.stages[-1]['seconds']:.0f}s"
    )
    return 0


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="perplexity (ONNX Runtime on the CPU, or TensorRT)")
    p.add_argument("model_dir", type=Path)
    p.add_argument(
        "--text", type=Path, help="UTF-8 text file (default: pydoc_data evaluation part)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=_run_eval, flags=add_config_flags(p, "eval", EvalConfig))


def _run_eval(args: argparse.Namespace) -> int:
    from smoothrot.compiler.measure.evaluate import evaluate_dir

    config = args.flags.config(args)
    result = evaluate_dir(args.model_dir, config, args.text, progress=not args.json)
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"perplexity {result['ppl']:.3f} over {result['tokens']} tokens "
            f"({result['windows']} x {result['seq']}) of {result['text']}"
        )
    return 0


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="greedy decoding with the KV cache")
    p.add_argument("model_dir", type=Path)
    p.add_argument("--prompt", required=True)
    p.set_defaults(run=_run_generate, flags=add_config_flags(p, "generate", GenerateConfig))


def _run_generate(args: argparse.Namespace) -> int:
    from smoothrot.compiler.runtime.generate import generate_text

    config = args.flags.config(args)
    print(generate_text(args.model_dir, args.prompt, config.max_new_tokens, config.backend))
    return 0


def _add_calibrate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="collect per-channel stats and Hessians at MatMul inputs")
    p.add_argument("model_dir", type=Path)
    p.add_argument(
        "-o", "--output", type=Path, help="statistics directory (default: MODEL_DIR/calibration)"
    )
    p.add_argument(
        "--text", type=Path, help="UTF-8 text file (default: pydoc_data calibration part)"
    )
    p.set_defaults(run=_run_calibrate, flags=add_config_flags(p, "calibrate", CalibrationConfig))


def _run_calibrate(args: argparse.Namespace) -> int:
    from smoothrot.compiler.calibrate.statistics import calibrate_dir

    out = calibrate_dir(args.model_dir, args.flags.config(args), args.output, args.text)
    print(f"calibration statistics written to {out}")
    return 0


def _add_analyze(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "analyze", help="per-layer quantization difficulty and W4A4 error under smooth/rotate"
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", help="HF model directory or .gguf file (default: packaged model)")
    src.add_argument("--onnx", type=Path, help="a directory written by `smoothrot export`")
    p.add_argument("-o", "--output", required=True, type=Path, help="output directory")
    p.set_defaults(run=_run_analyze, flags=add_config_flags(p, "analyze", AnalyzeConfig))


def _run_analyze(args: argparse.Namespace) -> int:
    from smoothrot.compiler.measure.analyze import analyze_model
    from smoothrot.compiler.reports.analyze_plots import summary_markdown

    config = args.flags.config(args)
    result = analyze_model(args.output, config, model=args.model, onnx_dir=args.onnx)
    print(summary_markdown(result["summary"], config.bits))
    layers = len(result["rows"]) // 4
    print(f"analysis of {layers} layers written to {args.output} in {result['seconds']:.0f}s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="smoothrot", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log each stage")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (
        _add_export,
        add_compile,
        add_lower,
        add_build,
        _add_eval,
        add_bench,
        _add_generate,
        _add_calibrate,
        _add_analyze,
        add_doctor,
    ):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help (0), or a usage error already printed as one line (2)
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    logging.basicConfig(format="%(name)s: %(message)s")
    logging.getLogger("smoothrot").setLevel(logging.INFO if args.verbose else logging.WARNING)
    # torch's exporter warns on every export that the optional torchvision is not installed
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    return run_guarded(lambda: args.run(args), verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
