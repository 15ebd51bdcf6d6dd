"""``smoothrot compile``: flags → CompileConfig (no logic here beyond the mapping)."""

from __future__ import annotations

import argparse
from pathlib import Path

from smoothrot.tools.cli_deploy import add_lowering_options, lower_config, print_lowering

__all__ = ["add_compile"]

_RECIPES = ["fp-smooth", "fp-rotate", "fp-hybrid", "w4a16", "w4a8", "w4a4", "w4a4kv4"]


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
    p.add_argument("--recipe", required=True, choices=_RECIPES)
    p.add_argument("-o", "--output", required=True, type=Path, help="output directory")
    p.add_argument(
        "--transform",
        choices=["none", "smooth", "rotate", "hybrid", "hybrid-online"],
        help="override the recipe's exact transform",
    )
    p.add_argument("--alpha", type=float, default=0.5, help="SmoothQuant migration strength")
    p.add_argument(
        "--grouping",
        choices=["per-oc", "per-ic", "adadim"],
        default="adadim",
        help="INT4 weight groups: along K per output channel, along N per input channel, or "
        "chosen per layer by calibration output error (AdaDim)",
    )
    p.add_argument(
        "--group-size",
        type=int,
        default=128,
        help="INT4 group size (0 = per channel); halved where it does not divide a dimension",
    )
    p.add_argument("--algorithm", choices=["rtn", "gptq"], default="gptq")
    p.add_argument(
        "--quantize-lm-head", action="store_true", help="INT4 lm_head too (default: keep it fp)"
    )
    p.add_argument(
        "--kv-prefix",
        type=int,
        default=0,
        metavar="P",
        help="KV entries at positions < P (the system prompt) stay unquantized (BiSup); "
        "also a runtime input `kv_fp_prefix`",
    )
    p.add_argument("--calibration-tokens", type=int, default=4096)
    p.add_argument(
        "--tune",
        action="store_true",
        help="BiSup: tune INT4 group scales, norm γ and INT4 activation clipping block by block "
        "against the float model "
        "(calibration text), folded into the graph; writes tune.md",
    )
    p.add_argument("--tune-epochs", type=int, default=15, help="passes over the tuning sequences")
    p.add_argument("--tune-sequences", type=int, default=32, help="128-token tuning sequences")
    p.add_argument("--seed", type=int, default=0, help="seed of any random rotation factor")
    p.add_argument("--no-eval", action="store_true", help="skip perplexity in the report")
    p.add_argument(
        "--target",
        choices=["qdq", "ort"],
        default="qdq",
        help="qdq: the portable INT4 QDQ graph; ort: also lowered to ONNX Runtime's fast CPU "
        "form (as `smoothrot lower`; INT4 recipes only)",
    )
    add_lowering_options(p)
    p.add_argument(
        "--dump-after",
        action="append",
        default=[],
        metavar="PASS",
        help="also write the graph after this pass to DIR/dumps/PASS/",
    )
    p.set_defaults(run=_run_compile)


def _run_compile(args: argparse.Namespace) -> int:
    from smoothrot.compiler.compile import compile_model
    from smoothrot.compiler.config import CompileConfig, Target, TuneConfig
    from smoothrot.compiler.recipes import Recipe, Transform
    from smoothrot.passes.quantize_weights import Algorithm, GroupingMode, WeightQuantConfig

    config = CompileConfig(
        recipe=Recipe(args.recipe),
        transform=Transform(args.transform) if args.transform else None,
        alpha=args.alpha,
        weights=WeightQuantConfig(
            grouping=GroupingMode(args.grouping),
            group_size=args.group_size,
            algorithm=Algorithm(args.algorithm),
            lm_head=args.quantize_lm_head,
        ),
        kv_prefix=args.kv_prefix,
        calibration_tokens=args.calibration_tokens,
        seed=args.seed,
        dump_after=tuple(args.dump_after),
        evaluate=not args.no_eval,
        tune=TuneConfig(sequences=args.tune_sequences, epochs=args.tune_epochs)
        if args.tune
        else None,
        target=Target(args.target),
        lowering=lower_config(args),
    )
    report = compile_model(args.output, config, model=args.model, onnx_dir=args.onnx)
    lg = report["logits"]
    print(
        f"compiled {args.recipe} (transform {report['transform']}) to {args.output}; logits vs "
        f"input: max |diff| {lg['max_abs_logit_diff']:.2e}, SNR {lg['logit_snr_db']:.1f} dB"
    )
    if "perplexity" in report:
        p = report["perplexity"]
        print(f"perplexity {p['before']:.3f} -> {p['after']:.3f} (x{p['ratio']:.3f})")
    size = report["size_bytes"]
    print(f"model {size['input'] / 1e6:.0f} MB -> {size['output'] / 1e6:.0f} MB; see report.md")
    if "lowering" in report:
        print_lowering(report["lowering"], args.output)
    return 0
