"""``smoothrot compile``: flags → CompileConfig → ``compile_model`` (no logic here)."""

from __future__ import annotations

import argparse
from pathlib import Path

from smoothrot.compiler.config import CompileConfig
from smoothrot.tools.cli_config import add_config_flags
from smoothrot.tools.cli_deploy import print_lowering

__all__ = ["add_compile"]


def add_compile(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compile",
        help="export (or take an export), apply a recipe's exact and quantization passes",
        description="Recipes: fp-* apply only exact transforms (perplexity must not change); "
        "w4a16/w4a8/w4a4/w4a4kv4 quantize weights to INT4 (and activations, KV cache).",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", help="HF model directory or .gguf file (default: packaged model)")
    src.add_argument("--onnx", type=Path, help="a directory written by `smoothrot export`")
    p.add_argument("-o", "--output", required=True, type=Path, help="output directory")
    p.add_argument(
        "--resume",
        action="store_true",
        help="go on with an interrupted streamed compile of the same -o (its finished layers)",
    )
    p.set_defaults(run=_run_compile, flags=add_config_flags(p, "compile", CompileConfig))


def _run_compile(args: argparse.Namespace) -> int:
    from smoothrot.compiler.compile import compile_model

    config: CompileConfig = args.flags.config(args)
    report = compile_model(
        args.output, config, model=args.model, onnx_dir=args.onnx, resume=args.resume
    )
    done = f"compiled {config.recipe.value} (transform {report['transform']}) to {args.output}"
    lg = report.get("logits")
    if lg is None:
        print(f"{done} (not evaluated)")
    else:
        print(
            f"{done}; logits vs input: max |diff| {lg['max_abs_logit_diff']:.2e}, SNR "
            f"{lg['logit_snr_db']:.1f} dB"
        )
    if "perplexity" in report:
        p = report["perplexity"]
        print(f"perplexity {p['before']:.3f} -> {p['after']:.3f} (x{p['ratio']:.3f})")
    size = report["size_bytes"]
    print(f"model {size['input'] / 1e6:.0f} MB -> {size['output'] / 1e6:.0f} MB; see report.md")
    if "lowering" in report:
        print_lowering(report["lowering"], args.output)
    return 0
