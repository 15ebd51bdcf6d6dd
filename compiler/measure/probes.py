"""Logits probes and perplexity pairs: how a transformed model directory compares with its input.

A probe runs both directories in ONNX Runtime on the first 128 tokens of the evaluation text
(optionally the last tokens decoded one by one through the KV cache) and reports max |Δ logits|,
SNR in dB and top-1 agreement; exact transforms are proven by it, lossy ones measured.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from smoothrot.compiler.config import EvalConfig
from smoothrot.compiler.measure.corpus import CorpusPart, corpus_part
from smoothrot.compiler.measure.evaluate import evaluate_dir
from smoothrot.compiler.runtime.ort_runner import OrtDecoder, load_tokenizer
from smoothrot.core.manifest import load_manifest

__all__ = [
    "PROBE_TOKENS",
    "compare_logits",
    "logits_probe",
    "model_bytes",
    "perplexity_pair",
    "teacher_forced_logits",
]

PROBE_TOKENS = 128


def model_bytes(directory: Path) -> int:
    m = load_manifest(directory).model_file
    return sum(p.stat().st_size for p in Path(directory).glob(f"{m}*") if p.is_file())


def teacher_forced_logits(decoder: OrtDecoder, ids: np.ndarray, decode_steps: int) -> np.ndarray:
    """Logits for ``ids``: one prefill, then the last ``decode_steps`` tokens one at a time
    through the KV cache (the decode path, which a graph may run differently)."""
    split = ids.shape[1] - decode_steps
    logits, past = decoder.forward(ids[:, :split])
    parts = [logits]
    for t in range(split, ids.shape[1]):
        logits, past = decoder.forward(ids[:, t : t + 1], past)
        parts.append(logits)
    return np.concatenate(parts, axis=1)


def logits_probe(
    source: Path, result: Path, optimize: bool = True, decode_steps: int = 0
) -> dict[str, Any]:
    """Logits of ``result`` vs ``source`` on the first 128 evaluation tokens (``optimize``:
    with ONNX Runtime's graph optimizations, else both graphs exactly as written), the last
    ``decode_steps`` of them decoded one by one with the KV cache."""
    ids = load_tokenizer(source).encode(corpus_part(CorpusPart.EVALUATION)[:4000])
    ids = np.asarray([ids[:PROBE_TOKENS]], np.int64)
    if not 0 <= decode_steps < ids.shape[1]:
        raise ValueError(f"decode_steps must be in [0, {ids.shape[1]}), got {decode_steps}")
    ref = teacher_forced_logits(OrtDecoder(source, optimize=optimize), ids, decode_steps)
    ours = teacher_forced_logits(OrtDecoder(result, optimize=optimize), ids, decode_steps)
    return compare_logits(ref[0], ours[0], decode_steps)


def compare_logits(ref: np.ndarray, ours: np.ndarray, decode_steps: int = 0) -> dict[str, Any]:
    """max |Δ| (beside the reference's max |logit|), SNR (dB) and top-1 agreement of two
    ``[tokens, V]`` logits arrays."""
    noise = float(np.linalg.norm(ours - ref))
    snr = 20 * np.log10(np.linalg.norm(ref) / noise) if noise > 0 else float("inf")
    return {
        "tokens": int(ref.shape[0]),
        "max_abs_logit_diff": float(np.abs(ours - ref).max()),
        "max_abs_logit": float(np.abs(ref).max()),
        "logit_snr_db": float(snr),
        "top1_agreement": float(np.mean(ours.argmax(-1) == ref.argmax(-1))),
        "decode_steps": decode_steps,
    }


def perplexity_pair(reference: Path, result: Path, keys: tuple[str, str]) -> dict[str, Any]:
    """Perplexity of both model directories on the evaluation text (the QDQ graph as written),
    under ``keys``, with their ratio."""
    ref = evaluate_dir(reference, EvalConfig(), progress=False)
    ours = evaluate_dir(result, EvalConfig(), progress=False)
    return {
        keys[0]: ref["ppl"],
        keys[1]: ours["ppl"],
        "ratio": ours["ppl"] / ref["ppl"],
        "text": ref["text"],
        "tokens": ref["tokens"],
    }
