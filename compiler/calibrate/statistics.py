"""Calibration: run ONNX Runtime on calibration text and collect, at the activation input of
every MatMul whose weight is a constant, per-channel statistics and the Hessian ``XᵀX``.

On-disk format (a directory, default ``MODEL_DIR/calibration``; every array is ``.npy`` so a
large model's Hessians can be memory-mapped with ``np.load(..., mmap_mode="r")``):

- ``index.json``: ``{"format": "smoothrot-calibration", "version": 1, "tokens": N,
  "sequences": S, "seq": L, "text": label, "text_sha256_16": digest,
  "layers": {module: activation_key}, "activations": {activation_key: {"channels": K,
  "consumers": [module, ...], "absmax": file, "l2": file, "hessian": file}}}``
- per activation (one per distinct MatMul input tensor; q/k/v share one): ``absmax`` ``[K]``
  = max |x_k| over all tokens (float32); ``l2`` ``[K]`` = sqrt(Σ x_k²) (float32, the per-channel
  L2 magnitude); ``hessian`` ``[K, K]`` = Σ xᵀx over tokens (float64 accumulation, stored
  float32, *not* divided by N).

Layer identity is the torch module name from the manifest (``model.layers.3.mlp.down_proj``),
found by weight content at export time, never the exporter's node names. A MatMul whose weight
is not a named Linear is keyed by its weight initializer name.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from tqdm import tqdm

from smoothrot.compiler.config import CalibrationConfig
from smoothrot.compiler.measure.corpus import CorpusPart, corpus_part, text_digest
from smoothrot.compiler.measure.evaluate import read_text
from smoothrot.compiler.modeldir.model_graph import load_graph
from smoothrot.compiler.modeldir.outdir import atomic_output_dir, check_output_dir
from smoothrot.compiler.runtime.ort_runner import empty_cache, load_tokenizer, session_options
from smoothrot.core.errors import SmoothrotError
from smoothrot.core.manifest import Manifest, load_manifest

__all__ = [
    "CALIBRATION_DIR",
    "CalibrationStats",
    "Accumulator",
    "ActivationStats",
    "calibrate_dir",
    "feeds",
    "load_calibration",
    "matmul_inputs",
    "session_with_outputs",
    "token_sequences",
]

CALIBRATION_DIR = "calibration"
_FORMAT, _VERSION, _INDEX = "smoothrot-calibration", 1, "index.json"


@dataclass(frozen=True)
class ActivationStats:
    key: str
    consumers: list[str]
    absmax: np.ndarray
    l2: np.ndarray
    hessian: np.ndarray | None


@dataclass(frozen=True)
class CalibrationStats:
    tokens: int
    layers: dict[str, str]
    activations: dict[str, ActivationStats]

    def for_layer(self, module: str) -> ActivationStats:
        if module not in self.layers:
            raise KeyError(f"no calibration statistics for layer {module}")
        return self.activations[self.layers[module]]


def matmul_inputs(model: ir.Model, weights: dict[str, str]) -> dict[str, list[str]]:
    """Activation value name → the layers (module names) whose constant-weight MatMul reads it."""
    module_of = {init: module for module, init in weights.items()}
    found: dict[str, list[str]] = {}
    for node in model.graph:
        if node.op_type != "MatMul" or len(node.inputs) < 2:
            continue
        x, b = node.inputs
        if x is None or b is None or not b.is_initializer() or x.name is None:
            continue
        found.setdefault(x.name, []).append(module_of.get(b.name or "", b.name or ""))
    return found


class Accumulator:
    """Running abs-max, sum of squares and (optionally) Hessian XᵀX of one activation."""

    def __init__(self, channels: int, hessian: bool) -> None:
        self.absmax = np.zeros(channels, np.float32)
        self.sumsq = np.zeros(channels, np.float64)
        self.hessian = np.zeros((channels, channels), np.float64) if hessian else None

    def add(self, x: np.ndarray) -> None:
        x = x.reshape(-1, x.shape[-1]).astype(np.float32, copy=False)
        np.maximum(self.absmax, np.abs(x).max(axis=0), out=self.absmax)
        self.sumsq += np.einsum("ij,ij->j", x, x, dtype=np.float64)
        if self.hessian is not None:
            self.hessian += x.T @ x  # fp32 product per sequence, fp64 running sum


def session_with_outputs(
    directory: Path, model_file: str, names: list[str]
) -> ort.InferenceSession:
    """Session over the model plus extra graph outputs, without copying the weights."""
    proto = onnx.load(str(directory / model_file), load_external_data=False)
    existing = {o.name for o in proto.graph.output}
    proto.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in existing)
    options = session_options()
    options.add_session_config_entry(
        "session.model_external_initializers_file_folder_path", str(directory)
    )
    return ort.InferenceSession(
        proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def token_sequences(directory: Path, config: CalibrationConfig, text_file: Path | None):
    if text_file is None:
        text, label = corpus_part(CorpusPart.CALIBRATION), "pydoc_data calibration part"
    else:
        text, label = read_text(text_file)
    ids = load_tokenizer(directory).encode(text, add_special_tokens=False)
    count = config.tokens // config.seq
    if len(ids) < count * config.seq:
        raise SmoothrotError(
            f"calibration text too short: {len(ids)} tokens, need {count * config.seq}"
        )
    seqs = np.asarray(ids[: count * config.seq], np.int64).reshape(count, config.seq)
    return seqs, label, text_digest(text)


def calibrate_dir(
    directory: Path,
    config: CalibrationConfig,
    output: Path | None = None,
    text_file: Path | None = None,
    progress: bool = True,
) -> Path:
    """Collect statistics for ``directory``'s model and write them (atomically) to ``output``."""
    directory = Path(directory)
    manifest = load_manifest(directory)
    output = Path(output) if output is not None else directory / CALIBRATION_DIR
    # The statistics may live inside the model directory (the default), never over it.
    inside = directory.resolve() in output.resolve().parents
    check_output_dir(output, marker=_INDEX, inputs=[] if inside else [directory])
    seqs, label, digest = token_sequences(directory, config, text_file)
    graph = load_graph(directory, manifest)
    inputs = matmul_inputs(graph, manifest.weights)
    if not inputs:
        raise SmoothrotError(f"{directory}: no MatMul with a constant weight to calibrate")
    names = list(inputs)
    session = session_with_outputs(directory, manifest.model_file, names)
    out_names = [o.name for o in session.get_outputs()]
    acc: dict[str, Accumulator] = {}
    t0 = time.perf_counter()
    for row in tqdm(seqs, desc="calibrate", unit="seq", disable=not progress):
        values = dict(zip(out_names, session.run(None, feeds(manifest, row)), strict=True))
        for name in names:
            x = values[name]
            if name not in acc:
                acc[name] = Accumulator(x.shape[-1], config.hessian)
            acc[name].add(x)
    meta = {
        "tokens": int(seqs.size),
        "sequences": len(seqs),
        "seq": config.seq,
        "text": label,
        "text_sha256_16": digest,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    _write(output, inputs, acc, meta)
    return output


def feeds(manifest: Manifest, row: np.ndarray) -> dict[str, np.ndarray]:
    seq = row.shape[0]
    feeds: dict[str, np.ndarray] = {
        "input_ids": row[None, :],
        "attention_mask": np.ones((1, seq), np.int64),
        "position_ids": np.arange(seq, dtype=np.int64)[None, :],
    }
    feeds.update(zip(manifest.past_names, empty_cache(manifest, 1), strict=True))
    return feeds


def _write(
    output: Path, inputs: dict[str, list[str]], acc: dict[str, Accumulator], meta: dict[str, Any]
) -> None:
    layers: dict[str, str] = {}
    activations: dict[str, Any] = {}
    with atomic_output_dir(output, marker=_INDEX) as tmp:
        for name, consumers in inputs.items():
            key = sorted(consumers)[0]
            a = acc[name]
            files = {"absmax": f"{key}.absmax.npy", "l2": f"{key}.l2.npy"}
            np.save(tmp / files["absmax"], a.absmax)
            np.save(tmp / files["l2"], np.sqrt(a.sumsq).astype(np.float32))
            if a.hessian is not None:
                files["hessian"] = f"{key}.hessian.npy"
                np.save(tmp / files["hessian"], a.hessian.astype(np.float32))
            activations[key] = {"channels": int(a.absmax.shape[0]), "consumers": consumers, **files}
            layers.update({c: key for c in consumers})
        index = {
            "format": _FORMAT,
            "version": _VERSION,
            **meta,
            "layers": layers,
            "activations": activations,
        }
        (tmp / _INDEX).write_text(json.dumps(index, indent=1) + "\n")


def load_calibration(path: Path, mmap: bool = True) -> CalibrationStats:
    """Read a calibration directory written by :func:`calibrate_dir`."""
    path = Path(path)
    try:
        index = json.loads((path / _INDEX).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SmoothrotError(f"{path} is not a calibration directory: {exc}") from exc
    if index.get("format") != _FORMAT or index.get("version") != _VERSION:
        raise SmoothrotError(f"{path} has an unknown calibration format/version")
    mode = "r" if mmap else None
    activations = {}
    for key, entry in index["activations"].items():
        hessian = np.load(path / entry["hessian"], mmap_mode=mode) if "hessian" in entry else None
        activations[key] = ActivationStats(
            key=key,
            consumers=entry["consumers"],
            absmax=np.load(path / entry["absmax"]),
            l2=np.load(path / entry["l2"]),
            hessian=hessian,
        )
    return CalibrationStats(tokens=index["tokens"], layers=index["layers"], activations=activations)
