"""``smoothrot build``: flags → BuildConfig → ``build_model`` (no logic here)."""

from __future__ import annotations

import argparse
from pathlib import Path

from smoothrot.compiler.config import BuildConfig
from smoothrot.tools.cli_config import add_config_flags

__all__ = ["add_build"]


def add_build(sub: argparse._SubParsersAction) -> None:
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
    p.set_defaults(run=_run_build, flags=add_config_flags(p, "build", BuildConfig))


def _run_build(args: argparse.Namespace) -> int:
    from smoothrot.compiler.targets.trt.build import build_model

    report = build_model(args.model_dir, args.output, args.flags.config(args))
    size, fp16 = report["size_bytes"], report["checks"]["fp16_vs_qdq"]
    print(
        f"built {report['backend']} {report['version']} engine {args.output / 'engine.trt'}: "
        f"{size['engine'] / 1e6:.1f} MB (QDQ ONNX {size['qdq_onnx'] / 1e6:.1f} MB); fp16 graph "
        f"vs QDQ: max |diff| {fp16['max_abs_logit_diff']:.3g}, top-1 {fp16['top1_agreement']:.1%}"
        f"; see build.md"
    )
    return 0
