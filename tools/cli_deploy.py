"""``smoothrot lower`` and ``smoothrot bench``: flags → LowerConfig / BenchConfig (no logic)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from smoothrot.compiler.config import BenchConfig, LowerConfig
from smoothrot.tools.cli_config import add_config_flags

__all__ = ["add_bench", "add_lower", "print_lowering"]


def add_lower(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "lower",
        help="rewrite a compiled INT4 QDQ model into ONNX Runtime's fast CPU form (MatMulNBits)",
        description="Per-OC INT4 layers become one MatMulNBits; per-IC layers one node of "
        "smoothrot's own ONNX Runtime op (or, with --per-ic split, pre-scaled activations into "
        "one MatMulNBits per column group). Writes lowering.md/.json: "
        "exactness at level 0, logits and perplexity at the shipped level.",
    )
    p.add_argument("model_dir", type=Path, help="a directory written by `smoothrot compile`")
    p.add_argument("-o", "--output", required=True, type=Path, help="output directory")
    p.set_defaults(run=_run_lower, flags=add_config_flags(p, "lower", LowerConfig))


def print_lowering(report: dict, out: Path) -> None:
    ex, lay = report["exactness_level0"], report["layers"]
    print(
        f"lowered {lay['lowered']} layers {lay['by_grouping']} to {out} at accuracy level "
        f"{report['accuracy_level']}; level-0 logits vs QDQ: max |diff| "
        f"{ex['max_abs_logit_diff']:.2e}"
    )
    if "perplexity" in report:
        p = report["perplexity"]
        print(
            f"perplexity QDQ {p['qdq_level0']:.3f} -> lowered {p['lowered']:.3f} "
            f"(x{p['ratio']:.4f}); see lowering.md"
        )


def _run_lower(args: argparse.Namespace) -> int:
    from smoothrot.compiler.targets.ort.lower import lower_model

    report = lower_model(args.model_dir, args.output, args.flags.config(args))
    print_lowering(report, args.output)
    return 0


def add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench", help="batch-1 greedy decode speed with the KV cache (ONNX Runtime or TensorRT)"
    )
    p.add_argument("model_dir", type=Path)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=_run_bench, flags=add_config_flags(p, "bench", BenchConfig))


def _run_bench(args: argparse.Namespace) -> int:
    from smoothrot.compiler.measure.bench import bench_dir

    config: BenchConfig = args.flags.config(args)
    r = bench_dir(args.model_dir, config)
    if config.profile:
        from smoothrot.compiler.measure.profile import profile_decode

        r["profile"] = profile_decode(args.model_dir, config.prompt_tokens, threads=config.threads)
    if args.json:
        print(json.dumps(r))
        return 0
    print(
        f"{args.model_dir}: prefill {r['prefill_tokens_per_s']:.1f} tokens/s "
        f"({config.prompt_tokens} tokens), decode {r['decode_tokens_per_s']:.2f} tokens/s "
        f"(median of {config.runs} x {config.new_tokens}), peak RSS "
        f"{r['peak_rss_bytes'] / 2**20:.0f} MiB, model {r['model_bytes'] / 1e6:.1f} MB, "
        f"{r['decode_weight_bytes'] / 1e6:.1f} MB read per decoded token"
    )
    if "profile" in r:
        from smoothrot.compiler.measure.profile import profile_table

        print(profile_table(r["profile"]))
    return 0
