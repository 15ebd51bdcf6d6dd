"""Quantization-difficulty analysis: how smoothing and rotation change each linear layer's W4A4
error, measured in numpy on real activations (the graph is not changed).

For every constant-weight MatMul ``Y = X B`` (``B`` is ``[K, N]``) the pair ``(X, B)`` is
transformed four ways, each keeping ``X' B' = X B``:

- ``none``: ``X, B``;
- ``smooth``: ``X diag(1/s), diag(s) B`` with SmoothQuant's ``s = max|X|^α / max|B_row|^(1-α)``;
  as in :class:`~smoothrot.passes.smooth.SmoothPass`, the weight maximum is taken over every
  MatMul that reads the same activation (q/k/v share one ``s``, gate/up share one) and o_proj's
  ``s`` is tied across the query heads of each GQA group; ``max|X|`` comes from the analysed
  tokens themselves;
- ``rotate``: ``X R, Rᵀ B`` with ``R`` the normalized (Kronecker-factored) Hadamard matrix of
  :func:`~smoothrot.core.hadamard.rotation_factors`;
- ``smooth+rotate``: ``(X diag(1/s)) R, Rᵀ diag(s) B`` (smoothing first, rotation second).

Per layer and transform: the *difficulty* of activations and weights (standard deviation of the
per-input-channel L2 magnitudes of ``X'`` and of the rows of ``B'``), the layer error
``‖XB − Q(X')Q(B')‖²_F`` with symmetric ``bits``-bit quantizers (activations per token, weights
per output channel), that error relative to ``‖XB‖²_F``, and the uniform-noise estimate
``(‖B'‖²_F Σ_t Δa_t² + ‖X'‖²_F Σ_n Δw_n²) / 12`` (``Δ`` the quantizer step sizes).

Activations are captured with ONNX Runtime on the calibration part of the built-in text, a
bounded group of MatMul inputs per pass over the text, and analysed one activation at a time.
"""

from __future__ import annotations

import enum
import json
import re
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tqdm import tqdm

from smoothrot.compiler.calibrate.statistics import (
    feeds,
    matmul_inputs,
    session_with_outputs,
    token_sequences,
)
from smoothrot.compiler.config import AnalyzeConfig, CalibrationConfig, ExportConfig
from smoothrot.compiler.export.exporter import export_model
from smoothrot.compiler.modeldir.model_graph import load_graph
from smoothrot.compiler.modeldir.outdir import atomic_output_dir, check_output_dir, scratch_dir
from smoothrot.compiler.modeldir.sources import resolve_source
from smoothrot.compiler.reports.analyze_plots import summarize, type_rank, write_report
from smoothrot.core.errors import SmoothrotError
from smoothrot.core.hadamard import rotation_factors
from smoothrot.core.manifest import Manifest, load_manifest
from smoothrot.passes.smooth import gqa_tied_scales, smoothing_scales

__all__ = [
    "Transform",
    "analyze_dir",
    "analyze_model",
    "channel_magnitudes",
    "difficulty",
    "error_estimate",
    "group_scales",
    "module_kind",
    "output_error",
    "quantize_per_channel",
    "quantize_per_token",
    "quantize_symmetric",
    "transform_pair",
]

_FORMAT, _VERSION, _JSON = "smoothrot-analysis", 1, "analysis.json"
_CAPTURE_BYTES = 256 << 20  # activations held at once while capturing
_BLOCK_BYTES = 16 << 20  # one block of layer outputs while measuring the error
_LAYER = re.compile(r"\blayers\.(\d+)\.")


class Transform(enum.Enum):
    NONE = "none"
    SMOOTH = "smooth"
    ROTATE = "rotate"
    SMOOTH_ROTATE = "smooth+rotate"

    @property
    def smooths(self) -> bool:
        return self in (Transform.SMOOTH, Transform.SMOOTH_ROTATE)

    @property
    def rotates(self) -> bool:
        return self in (Transform.ROTATE, Transform.SMOOTH_ROTATE)


# --- pure math -----------------------------------------------------------------------------


def quantize_symmetric(a: np.ndarray, axis: int, bits: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric round-to-nearest, one step per slice reduced along ``axis``.

    ``step = max|a| / (2^(bits-1) - 1)``, ``q = clip(round(a / step), -2^(bits-1), 2^(bits-1)-1)``.
    Returns ``(q · step, step)``; an all-zero slice has step 0 and stays 0.
    """
    qmax = 2 ** (bits - 1) - 1
    step = np.abs(a).max(axis=axis, keepdims=True) / qmax
    safe = np.where(step > 0, step, 1).astype(a.dtype)
    q = np.clip(np.round(a / safe), -qmax - 1, qmax)
    return (q * safe).astype(a.dtype, copy=False), np.squeeze(step, axis=axis)


def quantize_per_token(x: np.ndarray, bits: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Activations ``[T, K]``: one step per token (row)."""
    return quantize_symmetric(x, axis=1, bits=bits)


def quantize_per_channel(b: np.ndarray, bits: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Weights ``[K, N]``: one step per output channel (column)."""
    return quantize_symmetric(b, axis=0, bits=bits)


def channel_magnitudes(a: np.ndarray, axis: int) -> np.ndarray:
    """L2 norm along ``axis``: ``axis=0`` of ``X [T, K]`` and ``axis=1`` of ``B [K, N]`` both
    give the per-input-channel magnitudes (length K)."""
    return np.sqrt(np.einsum("ij,ij->j" if axis == 0 else "ij,ij->i", a, a, dtype=np.float64))


def difficulty(magnitudes: np.ndarray) -> float:
    """The paper's quantization difficulty: the std of the per-channel L2 magnitudes."""
    return float(np.std(magnitudes))


def group_scales(
    act_absmax: np.ndarray,
    weights: list[np.ndarray],
    alpha: float,
    tie: tuple[int, int, int] | None = None,
) -> np.ndarray:
    """SmoothQuant ``s`` for one activation read by all of ``weights`` (row max over all of them).

    ``tie = (kv_heads, group, head_dim)`` ties ``s`` across the query heads of each GQA group
    (o_proj's input), as SmoothPass does.
    """
    w = np.max([np.abs(b).max(axis=1) for b in weights], axis=0)
    if tie is None:
        return smoothing_scales(act_absmax, w, alpha)
    kv, _, d = tie
    return gqa_tied_scales(act_absmax, w, kv, d, alpha)[1]


def transform_pair(
    x: np.ndarray, b: np.ndarray, transform: Transform, s: np.ndarray, r: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``(X', B')`` with ``X' B' = X B``: smoothing by ``s`` first, rotation by ``R`` second."""
    if transform.smooths:
        s = s.astype(x.dtype)
        x, b = x / s[None, :], s[:, None] * b
    if transform.rotates:
        r = r.astype(x.dtype)
        x, b = x @ r, r.T @ b
    return x, b


def output_error(
    x: np.ndarray, b: np.ndarray, xq: np.ndarray, bq: np.ndarray
) -> tuple[float, float]:
    """``(‖X B − Xq Bq‖²_F, ‖X B‖²_F)``, computed over blocks of tokens to bound memory."""
    block = max(1, _BLOCK_BYTES // (4 * b.shape[1]))
    err = ref2 = 0.0
    for i in range(0, x.shape[0], block):
        y = x[i : i + block] @ b
        d = y - xq[i : i + block] @ bq
        err += float(np.einsum("ij,ij->", d, d, dtype=np.float64))
        ref2 += float(np.einsum("ij,ij->", y, y, dtype=np.float64))
    return err, ref2


def error_estimate(
    x: np.ndarray, b: np.ndarray, act_steps: np.ndarray, weight_steps: np.ndarray
) -> float:
    """Uniform-noise estimate ``(‖B‖²_F Σ_t Δa_t² + ‖X‖²_F Σ_n Δw_n²) / 12``."""
    b2 = np.einsum("ij,ij->", b, b, dtype=np.float64)
    x2 = np.einsum("ij,ij->", x, x, dtype=np.float64)
    da2 = np.sum(np.square(act_steps, dtype=np.float64))
    dw2 = np.sum(np.square(weight_steps, dtype=np.float64))
    return float((b2 * da2 + x2 * dw2) / 12.0)


def module_kind(module: str) -> tuple[str, int]:
    """``model.layers.3.mlp.down_proj`` → ``("down_proj", 3)``, ``lm_head`` → ``("lm_head", -1)``.

    The type is the last component of the torch module name.
    """
    m = _LAYER.search(module)
    return module.rsplit(".", 1)[-1], int(m.group(1)) if m else -1


def _analyze_layer(
    x: np.ndarray, b: np.ndarray, s: np.ndarray, r: np.ndarray, bits: int
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    rows, mags = [], {}
    for t in Transform:
        xp, bp = transform_pair(x, b, t, s, r)
        qx, da = quantize_per_token(xp, bits)
        qb, dw = quantize_per_channel(bp, bits)
        err, ref2 = output_error(x, b, qx, qb)
        mags[t.value] = channel_magnitudes(xp, axis=0)
        rows.append(
            {
                "transform": t.value,
                "act_difficulty": difficulty(mags[t.value]),
                "weight_difficulty": difficulty(channel_magnitudes(bp, axis=1)),
                "error": err,
                "rel_error": err / ref2 if ref2 > 0 else 0.0,
                "estimate": error_estimate(xp, bp, da, dw),
            }
        )
    return rows, mags


# --- driver ----------------------------------------------------------------------------------


def _chunks(sizes: dict[str, int], tokens: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    held = 0
    for name, k in sizes.items():
        if chunk and held + 4 * tokens * k > _CAPTURE_BYTES:
            yield chunk
            chunk, held = [], 0
        chunk.append(name)
        held += 4 * tokens * k
    if chunk:
        yield chunk


def _captures(
    session: ort.InferenceSession, manifest: Manifest, seqs: np.ndarray, sizes: dict[str, int]
) -> Iterator[tuple[str, np.ndarray]]:
    """Each activation ``[T, K]`` in turn, captured a bounded group at a time."""
    for chunk in _chunks(sizes, int(seqs.size)):
        parts: dict[str, list[np.ndarray]] = {n: [] for n in chunk}
        for row in seqs:
            for n, v in zip(chunk, session.run(chunk, feeds(manifest, row)), strict=True):
                parts[n].append(v.reshape(-1, v.shape[-1]).astype(np.float32, copy=False))
        for n in chunk:
            yield n, np.concatenate(parts.pop(n))


def analyze_dir(
    model_dir: Path, out: Path, config: AnalyzeConfig, progress: bool = True
) -> dict[str, Any]:
    """Analyse ``model_dir``'s exported model and write the results (atomically) to ``out``.

    Returns the contents of ``analysis.json`` (config, text, rows and summary).
    """
    model_dir, out = Path(model_dir), Path(out)
    manifest = load_manifest(model_dir)
    check_output_dir(out, marker=_JSON, inputs=[model_dir])
    cal = CalibrationConfig(tokens=config.tokens, seq=config.seq, hessian=False)
    seqs, label, digest = token_sequences(model_dir, cal, None)
    graph = load_graph(model_dir, manifest)
    inputs = matmul_inputs(graph, manifest.weights)
    if not inputs:
        raise SmoothrotError(f"{model_dir}: no MatMul with a constant weight to analyse")

    def weight(module: str) -> np.ndarray:
        value = graph.graph.initializers[manifest.weights.get(module, module)]
        return np.asarray(value.const_value.numpy(), np.float32)

    sizes = {
        n: graph.graph.initializers[manifest.weights.get(c[0], c[0])].shape[0]
        for n, c in inputs.items()
    }
    session = session_with_outputs(model_dir, manifest.model_file, list(inputs))
    d = manifest.dims
    rotations: dict[int, tuple[np.ndarray, str]] = {}
    rows: list[dict[str, Any]] = []
    downs: dict[str, tuple[float, dict[str, np.ndarray]]] = {}
    t0 = time.perf_counter()
    bar = tqdm(
        total=sum(map(len, inputs.values())), desc="analyze", unit="layer", disable=not progress
    )
    for name, x in _captures(session, manifest, seqs, sizes):
        consumers = inputs[name]
        ws = [weight(m) for m in consumers]
        k = x.shape[1]
        if k not in rotations:
            f = rotation_factors(k, config.seed)
            kind = "hadamard" if f.hadamard else "random"
            rotations[k] = (f.dense.astype(np.float32), f"{f.a.shape[0]}x{f.b.shape[0]} {kind}")
        absmax = np.abs(x).max(axis=0)
        types = {module_kind(m)[0] for m in consumers}
        tie = None
        if types == {"o_proj"} and d.heads % d.kv_heads == 0 and k == d.heads * d.head_dim:
            tie = (d.kv_heads, d.heads // d.kv_heads, d.head_dim)
        s = group_scales(absmax, ws, config.alpha, tie)
        for module, b in zip(consumers, ws, strict=True):
            ty, layer = module_kind(module)
            layer_rows, mags = _analyze_layer(x, b, s, rotations[k][0], config.bits)
            head = {"module": module, "type": ty, "layer": layer, "K": k, "N": int(b.shape[1])}
            rows += [{**head, **r} for r in layer_rows]
            if ty == "down_proj" and layer >= (2 * d.layers) // 3:
                downs[module] = (float(absmax.max()), mags)
            bar.update()
    bar.close()
    order = {t.value: i for i, t in enumerate(Transform)}
    rows.sort(
        key=lambda r: (r["layer"] < 0, r["layer"], type_rank(r["type"]), order[r["transform"]])
    )
    channels = max(downs, key=lambda m: downs[m][0]) if downs else None
    names = [t.value for t in Transform]
    result = {
        "format": _FORMAT,
        "version": _VERSION,
        "model": str(model_dir),
        "config": asdict(config),
        "tokens": int(seqs.size),
        "sequences": len(seqs),
        "text": label,
        "text_sha256_16": digest,
        "rotations": {str(k): v[1] for k, v in sorted(rotations.items())},
        "channels_module": channels,
        "seconds": round(time.perf_counter() - t0, 1),
        "summary": summarize(rows, names),
        "rows": rows,
    }
    with atomic_output_dir(out, marker=_JSON, inputs=[model_dir]) as tmp:
        write_report(tmp, result, names, downs[channels][1] if channels else None)
        (tmp / _JSON).write_text(json.dumps(result, indent=1) + "\n")
    return result


def analyze_model(
    out: Path,
    config: AnalyzeConfig,
    model: str | None = None,
    onnx_dir: Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """:func:`analyze_dir` on ``onnx_dir``, or on a temporary export of ``model`` (a HF directory
    or .gguf; default: the packaged model)."""
    out = Path(out)
    given = onnx_dir if onnx_dir is not None else Path(model) if model else None
    check_output_dir(out, marker=_JSON, inputs=[given])  # before a minutes-long export
    if onnx_dir is not None:
        return analyze_dir(Path(onnx_dir), out, config, progress)
    with scratch_dir(out) as work:
        export_dir = work / "export"
        export_model(
            resolve_source(model), export_dir, ExportConfig(allow_pickle=config.allow_pickle)
        )
        return analyze_dir(export_dir, out, config, progress)
