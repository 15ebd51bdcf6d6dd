"""``smoothrot lower`` and ``smoothrot bench``: flags → LowerConfig / BenchConfig."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = [
    "add_accuracy_level",
    "add_backend",
    "add_bench",
    "add_lower",
    "add_lowering_options",
    "lower_config",
    "print_lowering",
]


def add_backend(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--backend",
        choices=["ort", "trt"],
        default="ort",
        help="ort: ONNX Runtime on the CPU (default); trt: the engine.trt of a `smoothrot "
        "build` directory on an NVIDIA GPU",
    )


def add_accuracy_level(p: argparse.ArgumentParser) -> None:
    from smoothrot.compiler.config import DEFAULT_ACCURACY_LEVEL

    p.add_argument(
        "--accuracy-level",
        type=int,
        default=DEFAULT_ACCURACY_LEVEL,
        choices=range(5),
        help="MatMulNBits accuracy level shipped: 0 = fp32 compute (exact), 4 = int8 "
        f"activations per block (fast on CPUs; default {DEFAULT_ACCURACY_LEVEL})",
    )


def add_lowering_options(p: argparse.ArgumentParser) -> None:
    """The flags of LowerConfig (shared by `lower` and `compile --target ort`)."""
    add_accuracy_level(p)
    p.add_argument(
        "--per-ic",
        choices=["ortops", "split"],
        default="ortops",
        help="kernel of per-IC layers: ortops = smoothrot's ONNX Runtime op (one node per layer, "
        "its library is compiled on this machine on first use; default); split = standard ORT "
        "ops only (a Mul and a MatMulNBits per column group, slower)",
    )
    p.add_argument(
        "--per-oc",
        choices=["ortops", "matmulnbits"],
        default="ortops",
        help="kernel of per-OC layers: ortops = smoothrot's ONNX Runtime op MatMulInt4PerOC "
        "(groups that are multiples of 64; default); matmulnbits = ONNX Runtime's MatMulNBits",
    )
    p.add_argument(
        "--rotation",
        choices=["ortops", "matmul"],
        default="ortops",
        help="online Hadamard rotations: ortops = one smoothrot KroneckerRotation node each "
        "(default); matmul = the QDQ graph's Reshape/MatMul/MatMul/Reshape (standard ops)",
    )
    p.add_argument(
        "--attention",
        choices=["ortops", "standard"],
        default="ortops",
        help="attention: ortops = one smoothrot GroupedAttention node per layer, reading the KV "
        "cache in place (default); standard = the exporter's nodes (repeated K/V heads)",
    )


def lower_config(args: argparse.Namespace):  # noqa: ANN201 - LowerConfig, imported lazily
    from smoothrot.compiler.config import LowerConfig
    from smoothrot.passes.lower_attention import AttentionKernel
    from smoothrot.passes.lower_ort import PerIcKernel, PerOcKernel
    from smoothrot.passes.lower_rotation import RotationKernel

    return LowerConfig(
        accuracy_level=args.accuracy_level,
        evaluate=not args.no_eval,
        per_ic=PerIcKernel(args.per_ic),
        per_oc=PerOcKernel(args.per_oc),
        rotation=RotationKernel(args.rotation),
        attention=AttentionKernel(args.attention),
    )


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
    add_lowering_options(p)
    p.add_argument("--no-eval", action="store_true", help="skip perplexity in the report")
    p.set_defaults(run=_run_lower)


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

    print_lowering(lower_model(args.model_dir, args.output, lower_config(args)), args.output)
    return 0


def add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench", help="batch-1 greedy decode speed with the KV cache (ONNX Runtime or TensorRT)"
    )
    p.add_argument("model_dir", type=Path)
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--runs", type=int, default=5, help="timed runs (medians reported)")
    p.add_argument("--threads", type=int, default=0, help="0 = ONNX Runtime's default")
    p.add_argument(
        "--accuracy-level",
        type=int,
        default=4,
        choices=range(5),
        help="for QDQ (not lowered) models: the level ORT fuses DQ+MatMul at",
    )
    add_backend(p)
    p.add_argument(
        "--profile",
        action="store_true",
        help="also profile 32 decode steps with ONNX Runtime's profiler: time per op type and "
        "the online rotations' share",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=_run_bench)


def _run_bench(args: argparse.Namespace) -> int:
    from smoothrot.compiler.config import Backend, BenchConfig
    from smoothrot.compiler.measure.bench import bench_dir

    config = BenchConfig(
        prompt_tokens=args.prompt_tokens,
        new_tokens=args.new_tokens,
        runs=args.runs,
        threads=args.threads,
        accuracy_level=args.accuracy_level,
        backend=Backend(args.backend),
    )
    if args.profile and config.backend is not Backend.ORT:
        raise ValueError("--profile uses ONNX Runtime's profiler: it needs --backend ort")
    r = bench_dir(args.model_dir, config)
    if args.profile:
        from smoothrot.compiler.measure.profile import profile_decode

        r["profile"] = profile_decode(args.model_dir, args.prompt_tokens, threads=args.threads)
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
