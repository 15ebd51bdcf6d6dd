"""Run a built engine on a GPU against ONNX Runtime on the same graph, and time it.

On a machine with an NVIDIA GPU and TensorRT::

    python -m smoothrot.tools.check_engine out/smollm2-w4a16-trt --fp16 out/smollm2-fp16-trt

``--fp16``: a `smoothrot build` of the fp32 *export* (a dense fp16 engine), the baseline for the
decode-speed ratio. Prints greedy agreement over ``--steps`` tokens (TensorRT vs ONNX Runtime
running the engine's own ``model.onnx``, graph as written), the minimum cosine of the prompt's
logits, and decode tokens/s (median of ``--runs``) of each engine, all measured in this run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from smoothrot.compiler.config import Backend, BenchConfig
from smoothrot.compiler.measure.bench import bench_dir
from smoothrot.compiler.reports.build_report import greedy_prompt
from smoothrot.compiler.runtime.ort_runner import OrtDecoder

__all__ = ["check_engine", "main"]


def check_engine(built: Path, steps: int = 32, runs: int = 5) -> dict[str, Any]:
    from smoothrot.compiler.runtime.trt_runner import TrtDecoder  # needs a GPU

    engine = TrtDecoder(built)
    reference = OrtDecoder(built, optimize=False)
    prompt = greedy_prompt(built)
    ours, ref = engine.generate(prompt, steps), reference.generate(prompt, steps)
    equal = next((i for i, (a, b) in enumerate(zip(ours, ref, strict=False)) if a != b), steps)
    got, _ = engine.forward(np.array([prompt]))
    want, _ = reference.forward(np.array([prompt]))
    cosine = (got * want).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(want, axis=-1)
    speed = bench_dir(built, BenchConfig(runs=runs, backend=Backend.TRT))
    return {
        "engine": str(built),
        "greedy_steps": steps,
        "leading_tokens_equal": equal,
        "min_logit_cosine": float(cosine.min()),
        "decode_tokens_per_s": speed["decode_tokens_per_s"],
        "prefill_tokens_per_s": speed["prefill_tokens_per_s"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("engine_dir", type=Path, help="a `smoothrot build` output directory")
    parser.add_argument("--fp16", type=Path, help="a dense fp16 engine directory to compare with")
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json-file", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    try:
        results = [check_engine(args.engine_dir, args.steps, args.runs)]
        if args.fp16 is not None:
            results.append(check_engine(args.fp16, args.steps, args.runs))
    except ValueError as exc:  # SmoothrotError: no GPU, no engine, a bad directory
        print(f"check_engine: error: {exc}", file=sys.stderr)
        return 2
    for r in results:
        print(
            f"{r['engine']}: greedy {r['leading_tokens_equal']}/{r['greedy_steps']} tokens equal "
            f"to ONNX Runtime, min logit cosine {r['min_logit_cosine']:.5f}, decode "
            f"{r['decode_tokens_per_s']:.1f} tokens/s, prefill {r['prefill_tokens_per_s']:.0f}"
        )
    if len(results) == 2:
        ratio = results[0]["decode_tokens_per_s"] / results[1]["decode_tokens_per_s"]
        print(f"decode speed vs the fp16 engine: x{ratio:.2f}")
    if args.json_file:
        args.json_file.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
