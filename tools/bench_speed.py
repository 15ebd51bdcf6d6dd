"""Decode speed on the CPU, side by side, in one run: fp32 vs ONNX Runtime's quantizer vs ours.

Every model is built from the same fp32 export, lowered for ONNX Runtime where it is ours
(``smoothrot lower``, accuracy level 4 unless ``--accuracy-level``), and benchmarked by
``smoothrot bench`` in its own process (so each peak RSS is its own), with the same settings.
Also measured in the same run: the machine's memory bandwidth (a large threaded copy) for the
roofline, and the one-layer micro-benchmark of ``tools/bench_layer.py``::

    python -m smoothrot.tools.bench_speed -o out/bench_speed --onnx out/smollm2-fp32 --cache DIR

Rows built with RTN instead of GPTQ run exactly as fast as GPTQ ones (same format, same
groupings); RTN only saves build time. Writes ``results.json``, ``results.md`` and
``decode_speed.png`` into the output directory; ``--only`` re-runs some rows. ``--docs
docs/speed.md`` also writes the tables as a page of ``docs/`` (with the run's environment, see
``bench_docs``) and the plot beside it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import onnx_ir as ir

from smoothrot.compiler.compile import compile_model
from smoothrot.compiler.config import CompileConfig, LowerConfig
from smoothrot.compiler.measure.bench import memory_bandwidth
from smoothrot.compiler.measure.profile import profile_decode
from smoothrot.compiler.modeldir.model_dir import write_model_dir
from smoothrot.compiler.modeldir.outdir import atomic_output_dir
from smoothrot.compiler.recipes import Recipe, Transform
from smoothrot.compiler.targets.ort.lower import lower_model
from smoothrot.core.manifest import load_manifest
from smoothrot.passes.lower_attention import AttentionKernel
from smoothrot.passes.lower_ort import PerIcKernel, PerOcKernel
from smoothrot.passes.lower_rotation import RotationKernel
from smoothrot.passes.norm_div import NormDivPass
from smoothrot.passes.quantize_weights import Algorithm, GroupingMode, WeightQuantConfig
from smoothrot.tools.bench_docs import command_line, write_doc
from smoothrot.tools.bench_layer import layer_shape
from smoothrot.tools.bench_layer import run as bench_layers
from smoothrot.tools.bench_layer import table as layer_table
from smoothrot.tools.peer_ort import PeerConfig, quantize_with_ort

__all__ = ["ROWS", "SpeedRow", "main", "parse_args", "run"]

FP32, PEER = "fp32 export", "ORT MatMulNBitsQuantizer RTN b128 (lm_head fp32)"
SHIPPED = "ours w4a16 (shipped: GPTQ AdaDim, rotate)"
ROTATION_MATMUL = "ours w4a16 (shipped), rotations as 4 standard nodes (--rotation matmul)"


@dataclass(frozen=True)
class SpeedRow:
    name: str
    recipe: Recipe | None = None  # None: not ours (fp32 or the peer)
    transform: Transform | None = None
    grouping: GroupingMode = GroupingMode.PER_OC
    algorithm: Algorithm = Algorithm.RTN
    peer_lm_head: bool = False
    lm_head: bool = False  # ours: lm_head INT4 too (--quantize-lm-head)
    per_ic: PerIcKernel = PerIcKernel.ORTOPS
    per_oc: PerOcKernel = PerOcKernel.ORTOPS
    rotation: RotationKernel = RotationKernel.ORTOPS
    attention: AttentionKernel = AttentionKernel.ORTOPS
    evaluate: bool = False  # perplexity in the compile and lowering reports


def _shipped(name: str, **variant: Any) -> SpeedRow:
    """A row of the shipped recipe (w4a16, GPTQ, AdaDim, rotate), lowered with ``variant``."""
    return SpeedRow(
        name, Recipe.W4A16, grouping=GroupingMode.ADADIM, algorithm=Algorithm.GPTQ, **variant
    )


ROWS = [
    SpeedRow(FP32),
    SpeedRow("fp32, norms as Div (the lowering's graph rewrite only)"),
    SpeedRow(PEER),
    SpeedRow("ORT MatMulNBitsQuantizer RTN b128, lm_head INT4 too", peer_lm_head=True),
    _shipped(SHIPPED, evaluate=True),
    _shipped(
        "ours w4a16 (shipped), the exporter's attention (--attention standard)",
        attention=AttentionKernel.STANDARD,
    ),
    _shipped(ROTATION_MATMUL, rotation=RotationKernel.MATMUL),
    _shipped(
        "ours w4a16 (shipped), per-OC layers as ORT's MatMulNBits (--per-oc matmulnbits)",
        per_oc=PerOcKernel.MATMULNBITS,
    ),
    SpeedRow("ours w4a16 per-OC, rotate", Recipe.W4A16),
    SpeedRow(
        "ours w4a16 per-OC, rotate, as ORT's MatMulNBits",
        Recipe.W4A16,
        per_oc=PerOcKernel.MATMULNBITS,
    ),
    _shipped("ours w4a16 (shipped), lm_head INT4 too", lm_head=True, evaluate=True),
    SpeedRow("ours w4a16 per-IC, rotate", Recipe.W4A16, grouping=GroupingMode.PER_IC),
    SpeedRow(
        "ours w4a16 per-IC, rotate, standard ORT ops only (--per-ic split)",
        Recipe.W4A16,
        grouping=GroupingMode.PER_IC,
        per_ic=PerIcKernel.SPLIT,
    ),
    SpeedRow("ours w4a16 per-OC, no online Hadamard", Recipe.W4A16, Transform.NONE),
    SpeedRow("ours w4a16 per-OC, hybrid-online", Recipe.W4A16, Transform.HYBRID_ONLINE),
    SpeedRow("ours w4a8 per-OC, rotate", Recipe.W4A8),
]


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")[:60]


def _build(row: SpeedRow, fp32: Path, dst: Path, cache: Path | None, level: int) -> Path:
    if row.name == FP32:
        return fp32
    if (dst / "smoothrot.json").is_file():
        return dst  # built by an earlier run of this benchmark
    if row.recipe is None and row.name.startswith("fp32"):
        model = ir.load(str(fp32 / "model.onnx"))
        NormDivPass()(model)
        with atomic_output_dir(dst) as tmp:
            write_model_dir(model, fp32, load_manifest(fp32), tmp, [])
        return dst
    if row.recipe is None:
        peer = PeerConfig(accuracy_level=level, lm_head=row.peer_lm_head)
        return quantize_with_ort(fp32, dst, peer)
    weights = WeightQuantConfig(grouping=row.grouping, algorithm=row.algorithm, lm_head=row.lm_head)
    config = CompileConfig(row.recipe, row.transform, weights=weights, evaluate=row.evaluate)
    qdq = dst.with_name(f"{dst.name}.qdq")
    if not (qdq / "smoothrot.json").is_file():
        compile_model(qdq, config, onnx_dir=fp32, cache=cache)
    lowering = LowerConfig(level, row.evaluate, row.per_ic, row.per_oc, row.rotation, row.attention)
    lower_model(qdq, dst, lowering)
    shutil.rmtree(qdq)
    return dst


def _perplexity(model: Path) -> dict[str, float]:
    """The lowered model's perplexity where its lowering report measured it (``evaluate``)."""
    report = model / "lowering.json"
    ppl = json.loads(report.read_text()).get("perplexity") if report.is_file() else None
    return {"perplexity": ppl["lowered"]} if ppl else {}


def _median_round(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the median decode speed, and every round's decode speed."""
    ranked = sorted(runs, key=lambda r: r["decode_tokens_per_s"])
    middle = ranked[(len(ranked) - 1) // 2]
    return {**middle, "decode_tokens_per_s_rounds": [r["decode_tokens_per_s"] for r in runs]}


def _bench(model: Path, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "smoothrot.tools.cli", "bench", str(model), "--json"]
    cmd += ["--runs", str(args.runs), "--prompt-tokens", str(args.prompt_tokens)]
    cmd += ["--new-tokens", str(args.new_tokens), "--threads", str(args.threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"bench of {model} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout)


def _table(results: list[dict[str, Any]], bandwidth: float) -> str:
    by = {r["row"]: r for r in results}
    fp32 = by.get(FP32, {}).get("decode_tokens_per_s")
    peer = by.get(PEER, {}).get("decode_tokens_per_s")
    lines = [
        "| row | decode tok/s | × fp32 | × peer | prefill tok/s | peak RSS MiB | model MB "
        "| MB read / token | roofline | perplexity |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        d = r["decode_tokens_per_s"]
        roof = r["decode_weight_bytes"] * d / bandwidth
        ppl = f"{r['perplexity']:.3f}" if "perplexity" in r else ""
        lines.append(
            f"| {r['row']} | {d:.2f} | {d / fp32 if fp32 else float('nan'):.2f} | "
            f"{d / peer if peer else float('nan'):.2f} | {r['prefill_tokens_per_s']:.0f} | "
            f"{r['peak_rss_bytes'] / 2**20:.0f} | {r['model_bytes'] / 1e6:.1f} | "
            f"{r['decode_weight_bytes'] / 1e6:.1f} | {roof:.0%} | {ppl} |"
        )
    for r in results:
        if "online_rotation_share" in r:
            share = r["online_rotation_share"]
            lines.append(f"\nOnline Hadamard share (ORT profiler), {r['row']}: {share:.1%}")
    none = by.get("ours w4a16 per-OC, no online Hadamard")
    for name in ("ours w4a16 per-OC, rotate", "ours w4a16 per-OC, hybrid-online"):
        if none and name in by:
            t, t0 = 1 / by[name]["decode_tokens_per_s"], 1 / none["decode_tokens_per_s"]
            lines.append(f"\nOnline Hadamard share of decode time, {name}: {(t - t0) / t:.1%}")
    return "\n".join(lines)


def _plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 0.45 * len(results) + 1.2))
    names = [r["row"] for r in results][::-1]
    speeds = [r["decode_tokens_per_s"] for r in results][::-1]
    colors = ["tab:orange" if n.startswith("ours") else "tab:gray" for n in names]
    ax.barh(names, speeds, color=colors)
    ax.set_xlabel("decode tokens/s (batch 1, median)")
    # Right-aligned: the row labels leave the axes narrower than the title.
    ax.set_title("SmolLM2-135M batch-1 decode (orange: ours, lowered)", loc="right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


PROTOCOL = (
    "Every model is built from the same fp32 export and benchmarked by `smoothrot bench` in its "
    "own process (batch 1, greedy, KV cache, {prompt} prompt + {new} new tokens, "
    "MatMulNBits accuracy level {level} for ours and the peer's). The rows are benchmarked "
    "round-robin, {rounds} rounds × `--runs {runs}`, and each row shows its median round. "
    "Roofline = weight bytes per decoded token × tokens/s ÷ the memory bandwidth measured in "
    "the same run."
)


def _docs(args: argparse.Namespace, command: str, results: list[dict[str, Any]], text: str) -> None:
    """The ``--docs`` page: protocol, the tables of ``results.md``, every round, the plot."""
    path: Path = args.docs
    path.parent.mkdir(parents=True, exist_ok=True)
    # one plot per page: docs/speed.md's is decode_speed.png, docs/speed-gemma3.md's
    # decode_speed-gemma3.png
    suffix = path.stem.removeprefix("speed")
    plot = f"decode_speed{suffix}.png"
    shutil.copyfile(args.output / "decode_speed.png", path.parent / plot)
    protocol = PROTOCOL.format(
        prompt=args.prompt_tokens,
        new=args.new_tokens,
        level=args.level,
        rounds=args.rounds,
        runs=args.runs,
    )
    rounds = [
        f"- {r['row']}: " + " / ".join(f"{v:.2f}" for v in r["decode_tokens_per_s_rounds"])
        for r in results
        if "decode_tokens_per_s_rounds" in r
    ]
    body = [protocol, text.strip(), "Decode tok/s of every round:", "\n".join(rounds)]
    body.append(f"![decode speed]({plot})")
    write_doc(path, "Decode speed", command, "\n\n".join(body))


def run(
    args: argparse.Namespace, rows: list[SpeedRow], command: str | None = None
) -> list[dict[str, Any]]:
    """Build, benchmark and table ``rows``; ``command`` (for ``--docs``) defaults to this
    process's command line."""
    out: Path = args.output
    (out / "models").mkdir(parents=True, exist_ok=True)
    results_file = out / "results.json"
    old = json.loads(results_file.read_text())["rows"] if results_file.is_file() else []
    results = [r for r in old if r["row"] not in {row.name for row in rows}]
    models = {}
    for row in rows:  # every build first, so the timings below run back to back
        print(f"[bench_speed] build {row.name}", flush=True)
        models[row.name] = _build(
            row, args.onnx, out / "models" / _slug(row.name), args.cache, args.level
        )
    if args.build_only:
        return []
    rounds: dict[str, list[dict[str, Any]]] = {row.name: [] for row in rows}
    for r in range(args.rounds):  # round-robin: a slow spell of a shared machine hits every row
        for row in rows:
            print(f"[bench_speed] round {r + 1}/{args.rounds}: {row.name}", flush=True)
            rounds[row.name].append(_bench(models[row.name], args))
    for row in rows:
        results.append(
            {"row": row.name, **_median_round(rounds[row.name]), **_perplexity(models[row.name])}
        )
        if row.name in (SHIPPED, ROTATION_MATMUL):  # measured inside one run: no drift
            profile = profile_decode(models[row.name], args.prompt_tokens, threads=args.threads)
            results[-1]["online_rotation_share"] = profile["online_rotation_share"]
    order = [row.name for row in ROWS]
    results.sort(key=lambda r: order.index(r["row"]) if r["row"] in order else len(order))
    bandwidth = max(memory_bandwidth() for _ in range(3))
    layers = bench_layers(args.layer_shapes, 1, 128, [args.level], args.threads, 7)
    payload = {
        "rows": results,
        "memory_bandwidth_bytes_per_s": bandwidth,
        "layers": [asdict(r) for r in layers],
        "settings": vars(args) | {"onnx": str(args.onnx), "output": str(out)},
    }
    results_file.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    text = (
        _table(results, bandwidth)
        + f"\n\nMemory bandwidth (threaded copy, read+write): {bandwidth / 1e9:.1f} GB/s.\n\n"
        + layer_table(layers)
        + "\n"
    )
    (out / "results.md").write_text(text)
    _plot(results, out / "decode_speed.png")
    if args.docs is not None:
        _docs(args, command or command_line("smoothrot.tools.bench_speed"), results, text)
    print(text)
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--onnx", type=Path, required=True, help="the fp32 `smoothrot export`")
    parser.add_argument(
        "--cache",
        type=Path,
        help="calibration statistics reused between runs (same export, same smoothrot sources)",
    )
    parser.add_argument("--level", type=int, default=4, help="MatMulNBits accuracy level")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per `smoothrot bench`")
    parser.add_argument(
        "--rounds", type=int, default=3, help="round-robin rounds over the rows (median taken)"
    )
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument(
        "--layer-shapes", type=layer_shape, nargs="+", default=[(576, 1536), (4096, 4096)]
    )
    parser.add_argument("--only", nargs="+", help="row names (substring match) to (re)run")
    parser.add_argument(
        "--build-only", action="store_true", help="build the rows' models, measure nothing"
    )
    parser.add_argument(
        "--docs", type=Path, help="also write the tables as this Markdown page (e.g. docs/speed.md)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    rows = [r for r in ROWS if not args.only or any(s in r.name for s in args.only)]
    run(args, rows, command_line("smoothrot.tools.bench_speed", argv))


if __name__ == "__main__":
    main()
