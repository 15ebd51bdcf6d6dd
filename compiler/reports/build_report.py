"""The parts of the build report that are not the build: greedy agreement and ``build.md``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from smoothrot.compiler.measure.corpus import CorpusPart, corpus_part
from smoothrot.compiler.runtime.ort_runner import OrtDecoder, load_tokenizer

__all__ = ["GREEDY_STEPS", "build_markdown", "greedy_agreement", "greedy_prompt"]

GREEDY_STEPS = 32


def greedy_prompt(directory: Path) -> list[int]:
    """The first 32 tokens of the evaluation text: the prompt of every greedy comparison."""
    return load_tokenizer(directory).encode(corpus_part(CorpusPart.EVALUATION)[:2000])[:32]


def greedy_agreement(source: Path, built: Path, steps: int = GREEDY_STEPS) -> dict[str, Any]:
    """Greedy decode (KV cache) of both models from :func:`greedy_prompt`: how many leading
    tokens agree (ONNX Runtime, graphs as written)."""
    prompt = greedy_prompt(source)
    ref = OrtDecoder(source, optimize=False).generate(prompt, steps)
    ours = OrtDecoder(built, optimize=False).generate(prompt, steps)
    pairs = enumerate(zip(ref, ours, strict=False))
    agree = next((i for i, (a, b) in pairs if a != b), min(len(ref), steps))
    return {"prompt_tokens": len(prompt), "steps": steps, "leading_tokens_equal": agree}


def build_markdown(r: dict[str, Any]) -> str:
    eng, size, checks, graph = r["engine"], r["size_bytes"], r["checks"], r["graph"]
    mb = {k: v / 1e6 for k, v in size.items()}
    lines = [
        f"# smoothrot build report: {r['backend']} {r['version']}",
        "",
        f"Precision: {r['precision']}. INT4 weights {graph['int4_weights']} as blocked "
        f"DequantizeLinear; {graph['qdq_rewritten']} run-time-scaled QDQ pairs rewritten as "
        "Clip(Round(x/s))·s.",
        f"Engine: {eng['layers']} network layers, profiles prefill {eng['profiles']['prefill']} "
        f"/ decode {eng['profiles']['decode']}, targets {eng['compute_capabilities']}; built in "
        f"{eng['build_seconds']:.0f} s. Validity API: {eng['validity']} "
        f"(diagnostics {eng['diagnostics'] or 'none'}; header valid: {eng['header_valid']}).",
        "",
        "| file | MB |",
        "|---|---|",
        f"| QDQ ONNX (input) | {mb['qdq_onnx']:.1f} |",
        f"| TensorRT-form ONNX (fp16) | {mb['trt_onnx']:.1f} |",
        f"| engine.trt | {mb['engine']:.1f} |",
        "",
        "| check (ONNX Runtime, graphs as written, vs the QDQ model) | max abs logit diff | "
        "SNR dB | top-1 |",
        "|---|---|---|---|",
    ]
    for key, label in (("exactness_fp32", "TensorRT rewrite in fp32 (exactness)"),
                       ("fp16_vs_qdq", "shipped fp16 graph")):  # fmt: skip
        if key in checks:
            c = checks[key]
            lines.append(
                f"| {label}, {c['tokens']} tokens | {c['max_abs_logit_diff']:.3g} | "
                f"{c['logit_snr_db']:.1f} | {c['top1_agreement']:.1%} |"
            )
    g = checks["greedy"]
    lines += [
        "",
        f"Greedy decoding, {g['prompt_tokens']}-token prompt: the fp16 graph agrees with the QDQ "
        f"model on the first {g['leading_tokens_equal']} of {g['steps']} tokens.",
    ]
    if "perplexity" in checks:
        p = checks["perplexity"]
        lines.append(
            f"Perplexity ({p['tokens']} tokens of the {p['text']}): QDQ {p['qdq']:.3f}, fp16 "
            f"graph {p['fp16']:.3f} (×{p['ratio']:.4f})."
        )
    lines += [
        "",
        "The fp16 numbers come from ONNX Runtime on the CPU running the same graph the engine "
        "was built from; the engine itself needs a GPU to run (not measured here).",
    ]
    return "\n".join(lines) + "\n"
