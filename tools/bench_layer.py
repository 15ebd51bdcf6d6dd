"""Micro-benchmark of one linear layer in ONNX Runtime on the CPU: fp32 vs INT4 per-OC vs per-IC.

Each INT4 variant is built the way the compiler builds it — ``MatMul(X, DequantizeLinear(q, s))``
written by ``quantize_rtn`` — and then lowered by ``LowerToMatMulNBitsPass``, so what is timed is
exactly what ``smoothrot lower`` ships: per-OC as ONNX Runtime's MatMulNBits and as our own op
(``ortops``), per-IC as our own op and as the standard-ops fallback (``split``). Times are
medians over ``--runs`` runs of ``--iters`` calls each, all in this one process::

    python -m smoothrot.tools.bench_layer --shapes 576x1536 4096x4096 --m 1

``--docs FILE`` also writes the table as a Markdown page (with the run's environment, see
``bench_docs``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from smoothrot.compiler.measure.layer_graphs import linear_layer_model
from smoothrot.core.int4 import Grouping
from smoothrot.ortops.library import register as register_ortops
from smoothrot.passes.lower_ort import KERNEL_OPS, LowerToMatMulNBitsPass, PerIcKernel, PerOcKernel
from smoothrot.tools.bench_docs import command_line, write_doc

__all__ = ["LayerTiming", "layer_model", "layer_shape", "main", "table", "time_layer"]


@dataclass(frozen=True)
class LayerTiming:
    shape: str  # "KxN"
    m: int
    variant: str
    accuracy_level: int | None
    median_us: float
    weight_bytes: int


def layer_model(
    k: int,
    n: int,
    grouping: Grouping | None,
    group: int,
    level: int,
    seed: int = 0,
    per_ic: PerIcKernel = PerIcKernel.ORTOPS,
    per_oc: PerOcKernel = PerOcKernel.MATMULNBITS,
) -> ir.Model:
    """One ``Y = X · B`` layer: fp32 (``grouping`` None) or INT4 QDQ, lowered as it ships."""
    model = linear_layer_model(k, n, grouping, group, seed)
    if grouping is not None:
        details = LowerToMatMulNBitsPass(level, per_ic, per_oc)(model).details
        if len(details["lowered"]) != 1:
            raise RuntimeError(f"the layer was not lowered: {details['skipped']}")
    return model


def _weight_bytes(model: ir.Model) -> int:
    return sum(v.const_value.nbytes for v in model.graph.initializers.values())  # type: ignore[union-attr]


def time_layer(model: ir.Model, m: int, threads: int, runs: int, iters: int) -> float:
    """Median microseconds per call over ``runs`` runs of ``iters`` calls."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    if any(node.op_type in KERNEL_OPS[1:] for node in model.graph):  # our ops
        register_ortops(options, build=True)
    proto = ir.serde.serialize_model(model)
    session = ort.InferenceSession(
        proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    k = model.graph.inputs[0].shape[1]
    feeds = {"x": np.random.default_rng(1).standard_normal((m, k)).astype(np.float32)}
    for _ in range(max(iters // 4, 3)):  # warm-up
        session.run(None, feeds)
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(iters):
            session.run(None, feeds)
        samples.append((time.perf_counter() - start) / iters * 1e6)
    return statistics.median(samples)


PER_OC_BASE = "int4 per-OC (MatMulNBits)"  # ONNX Runtime's own kernel: the ratios' baseline
VARIANTS: dict[str, tuple[Grouping | None, PerIcKernel, PerOcKernel]] = {
    "fp32": (None, PerIcKernel.ORTOPS, PerOcKernel.ORTOPS),
    PER_OC_BASE: (Grouping.PER_OC, PerIcKernel.ORTOPS, PerOcKernel.MATMULNBITS),
    "int4 per-OC (ortops)": (Grouping.PER_OC, PerIcKernel.ORTOPS, PerOcKernel.ORTOPS),
    "int4 per-IC (ortops)": (Grouping.PER_IC, PerIcKernel.ORTOPS, PerOcKernel.ORTOPS),
    "int4 per-IC (split)": (Grouping.PER_IC, PerIcKernel.SPLIT, PerOcKernel.ORTOPS),
}


def run(
    shapes: list[tuple[int, int]], m: int, group: int, levels: list[int], threads: int, runs: int
) -> list[LayerTiming]:
    rows = []
    for k, n in shapes:
        iters = max(5, int(2e7 // (k * n)))
        for name, (grouping, per_ic, per_oc) in VARIANTS.items():
            for level in [None] if grouping is None else levels:
                model = layer_model(k, n, grouping, group, level or 0, per_ic=per_ic, per_oc=per_oc)
                us = time_layer(model, m, threads, runs, iters)
                rows.append(LayerTiming(f"{k}x{n}", m, name, level, us, _weight_bytes(model)))
    return rows


def table(rows: list[LayerTiming]) -> str:
    lines = [
        "| shape | M | variant | acc. level | median µs | × fp32 | / MatMulNBits per-OC "
        "| weight MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        fp32 = next(x for x in rows if x.shape == r.shape and x.variant == "fp32")
        oc = [
            x
            for x in rows
            if x.shape == r.shape
            and x.variant == PER_OC_BASE
            and x.accuracy_level == r.accuracy_level
        ]
        ours = r.variant.startswith("int4") and r.variant != PER_OC_BASE
        ratio = f"{r.median_us / oc[0].median_us:.2f}" if ours else ""
        level = "" if r.accuracy_level is None else str(r.accuracy_level)
        lines.append(
            f"| {r.shape} | {r.m} | {r.variant} | {level} | {r.median_us:.1f} | "
            f"{fp32.median_us / r.median_us:.2f} | {ratio} | {r.weight_bytes / 1e6:.2f} |"
        )
    return "\n".join(lines)


def layer_shape(text: str) -> tuple[int, int]:
    try:
        k, n = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape must look like 576x1536, got {text!r}") from None
    return k, n


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--shapes", type=layer_shape, nargs="+", default=[(576, 1536), (4096, 4096)]
    )
    parser.add_argument("--m", type=int, default=1, help="rows of X (1 = one decoded token)")
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--accuracy-levels", type=int, nargs="+", default=[0, 4])
    parser.add_argument("--threads", type=int, default=0, help="0 = ONNX Runtime's default")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--docs", type=Path, help="also write the table as this Markdown page")
    args = parser.parse_args(argv)
    rows = run(args.shapes, args.m, args.group_size, args.accuracy_levels, args.threads, args.runs)
    if args.docs is not None:
        protocol = (
            f"One linear layer `Y = X · B` in ONNX Runtime on the CPU, M = {args.m}, INT4 group "
            f"{args.group_size}, lowered as `smoothrot lower` ships it; median µs over "
            f"{args.runs} runs, all in one process."
        )
        command = command_line("smoothrot.tools.bench_layer", argv)
        write_doc(args.docs, "One-layer micro-benchmark", command, protocol + "\n\n" + table(rows))
    print(json.dumps([asdict(r) for r in rows], indent=1) if args.json else table(rows))


if __name__ == "__main__":
    main()
