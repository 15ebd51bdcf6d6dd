"""``smoothrot build``: flags → BuildConfig."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_build"]


def _ccs(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part.strip().removeprefix("sm_")) for part in text.split(",") if part)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected e.g. 80,86,89 (got {text!r})") from None


def add_build(sub: argparse._SubParsersAction) -> None:
    from smoothrot.core.tensorrt import TrtBackend

    p = sub.add_parser(
        "build",
        help="build a TensorRT / TensorRT-RTX engine from a compiled INT4 QDQ model",
        description="Rewrites the QDQ graph into the form TensorRT parses (fp16 compute with fp32 "
        "norm statistics and rotary angles, INT4 weights as blocked DequantizeLinear on either "
        "axis, run-time-scaled QDQ as arithmetic), builds a strongly typed engine with prefill "
        "and decode profiles, and writes build.md/.json (sizes, validity, fp16 fidelity).",
    )
    p.add_argument("model_dir", type=Path, help="a directory written by `smoothrot compile`")
    p.add_argument("-o", "--output", required=True, type=Path, help="output directory")
    p.add_argument(
        "--trt-backend",
        choices=[b.value for b in TrtBackend],
        help="default: TensorRT if importable, else TensorRT-RTX",
    )
    p.add_argument("--max-prompt", type=int, default=512, help="longest prefill (default 512)")
    p.add_argument("--max-context", type=int, default=2048, help="longest cache + 1 (default 2048)")
    p.add_argument(
        "--compute-capability",
        type=_ccs,
        default=(),
        help="TensorRT-RTX targets, e.g. 80,86,89 (default: TensorRT-RTX's own)",
    )
    p.add_argument(
        "--plugins",
        action="store_true",
        help="INT4 GEMMs and online Hadamards as our Triton-kernel plugins (TensorRT >= 10.9 "
        "and a GPU; not TensorRT-RTX)",
    )
    p.add_argument("--no-eval", action="store_true", help="skip perplexity in the report")
    p.set_defaults(run=_run_build)


def _run_build(args: argparse.Namespace) -> int:
    from smoothrot.compiler.config import BuildConfig, EngineConfig
    from smoothrot.compiler.targets.trt.build import build_model
    from smoothrot.core.tensorrt import TrtBackend

    engine = EngineConfig(
        max_prompt=args.max_prompt,
        max_context=args.max_context,
        opt_prompt=min(128, args.max_prompt),
        opt_context=min(512, args.max_context),
        compute_capabilities=args.compute_capability,
    )
    backend = TrtBackend(args.trt_backend) if args.trt_backend else None
    config = BuildConfig(backend, engine, evaluate=not args.no_eval, plugins=args.plugins)
    report = build_model(args.model_dir, args.output, config)
    size, fp16 = report["size_bytes"], report["checks"]["fp16_vs_qdq"]
    print(
        f"built {report['backend']} {report['version']} engine {args.output / 'engine.trt'}: "
        f"{size['engine'] / 1e6:.1f} MB (QDQ ONNX {size['qdq_onnx'] / 1e6:.1f} MB); fp16 graph "
        f"vs QDQ: max |diff| {fp16['max_abs_logit_diff']:.3g}, top-1 {fp16['top1_agreement']:.1%}"
        f"; see build.md"
    )
    return 0
