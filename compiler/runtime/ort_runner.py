"""ONNX Runtime runner for a smoothrot model directory: one step with KV cache, greedy decode."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from smoothrot.compiler.modeldir.model_graph import check_graph_files
from smoothrot.compiler.modeldir.untrusted import (
    check_tokenizer_files,
    load_tokenizer_safely,
    refuse_auto_map,
)
from smoothrot.core.errors import SmoothrotError
from smoothrot.core.manifest import KV_PREFIX_INPUT, Manifest, load_manifest
from smoothrot.ortops.library import register as register_ortops
from smoothrot.ortops.spec import DOMAIN as ORTOPS_DOMAIN

__all__ = [
    "EXACT_ACCURACY_LEVEL",
    "OrtDecoder",
    "empty_cache",
    "greedy_generate",
    "load_tokenizer",
    "needs_ortops",
    "session_options",
]


# ORT fuses DequantizeLinear(axis 0) + MatMul into MatMulNBits at this accuracy level; at its
# default (4) the fused kernel quantizes activations to int8 per block, which is *not* the QDQ
# graph's meaning. Level 0 keeps fp32 compute, so the QDQ model is evaluated as written.
EXACT_ACCURACY_LEVEL = 0


def session_options(accuracy_level: int = EXACT_ACCURACY_LEVEL) -> ort.SessionOptions:
    """CPU session options that run a QDQ graph with the given MatMulNBits accuracy level."""
    if accuracy_level not in (0, 1, 2, 3, 4):
        raise ValueError(f"accuracy level must be 0..4, got {accuracy_level}")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", str(accuracy_level))
    # ORT's default order runs every node without data inputs first: each weight's
    # DequantizeLinear, so an unfused QDQ graph held all its weights in fp32 at once (an
    # 8B-shaped model as written: 21.9 GB peak; in priority order 6.4 GB, results unchanged).
    options.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    return options


def needs_ortops(model_path: Path) -> bool:
    """Whether the model uses smoothrot's own ONNX Runtime ops (its opset imports say so)."""
    try:
        proto = onnx.load(str(model_path), load_external_data=False)
    except Exception:  # noqa: BLE001 - a damaged file: ONNX Runtime reports it in one line
        return False
    return any(opset.domain == ORTOPS_DOMAIN for opset in proto.opset_import)


def empty_cache(manifest: Manifest, batch: int = 1) -> list[np.ndarray]:
    """A zero-length past for every layer (prefill)."""
    d, dtype = manifest.dims, manifest.dtype.numpy
    return [np.zeros((batch, d.kv_heads, 0, d.head_dim), dtype) for _ in manifest.past_names]


class OrtDecoder:
    """Runs the exported decoder graph on the CPU. ``past`` is the flat list of K/V arrays."""

    def __init__(
        self,
        directory: str | Path,
        threads: int = 0,
        accuracy_level: int = EXACT_ACCURACY_LEVEL,
        kv_prefix: int | None = None,
        optimize: bool = True,
        profile_prefix: str | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.manifest: Manifest = load_manifest(self.directory)
        options = session_options(accuracy_level)
        if not optimize:  # ORT's QDQ fusions change a few roundings; off = the graph as written
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        if profile_prefix:  # ORT writes one JSON trace, returned by session.end_profiling()
            options.enable_profiling = True
            options.profile_file_prefix = profile_prefix
        model_path = self.directory / self.manifest.model_file
        graph = check_graph_files(self.directory, self.manifest)  # before ORT opens the files
        if ORTOPS_DOMAIN in graph.opset_imports:  # our library, from its cache; built on first use
            register_ortops(options, build=True)
        try:
            self.session = ort.InferenceSession(
                str(model_path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # noqa: BLE001 - ORT raises its own untyped Fail / NotImplemented
            reason = str(exc).strip().splitlines()[0][:300]
            raise SmoothrotError(f"ONNX Runtime cannot load {model_path}: {reason}") from exc
        self.dtype = self.manifest.dtype.numpy
        self.extra_feeds: dict[str, np.ndarray] = {}
        if kv_prefix is not None:  # BiSup P at run time (models compiled with KV quantization)
            names = {i.name for i in self.session.get_overridable_initializers()}
            if KV_PREFIX_INPUT not in names:
                raise SmoothrotError(f"{directory} has no quantized KV cache to keep a prefix of")
            self.extra_feeds[KV_PREFIX_INPUT] = np.array(kv_prefix, np.int64)

    def empty_cache(self, batch: int = 1) -> list[np.ndarray]:
        return empty_cache(self.manifest, batch)

    def forward(
        self, input_ids: np.ndarray, past: list[np.ndarray] | None = None
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Logits ``[B,S,V]`` (fp32) and the present cache for ``input_ids [B,S]``."""
        input_ids = np.asarray(input_ids, dtype=np.int64)
        batch, seq = input_ids.shape
        past = self.empty_cache(batch) if past is None else past
        start = past[0].shape[2]
        feeds: dict[str, np.ndarray] = {
            "input_ids": input_ids,
            "attention_mask": np.ones((batch, start + seq), np.int64),
            "position_ids": np.broadcast_to(np.arange(start, start + seq), (batch, seq)).copy(),
        }
        feeds.update(zip(self.manifest.past_names, past, strict=True))
        feeds.update(self.extra_feeds)
        logits, *present = self.session.run(None, feeds)
        return logits.astype(np.float32, copy=False), present

    def generate(
        self, prompt_ids: Sequence[int], max_new_tokens: int, eos_ids: Sequence[int] = ()
    ) -> list[int]:
        return greedy_generate(self.forward, prompt_ids, max_new_tokens, eos_ids)


def greedy_generate(
    forward: Callable[..., tuple[np.ndarray, Any]],
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    eos_ids: Sequence[int] = (),
) -> list[int]:
    """Greedy decoding with the KV cache; stops after an EOS token (which is returned).
    ``forward(ids [1, S], past) → (logits, present)``; ``past`` is opaque to this loop."""
    logits, past = forward(np.array([prompt_ids]))
    out: list[int] = []
    for _ in range(max_new_tokens):
        token = int(np.argmax(logits[0, -1]))
        out.append(token)
        if token in eos_ids:
            break
        logits, past = forward(np.array([[token]]), past)
    return out


def load_tokenizer(directory: str | Path):  # noqa: ANN201 - a transformers tokenizer
    """The tokenizer saved next to the model by ``export`` (checked, never running code: a
    missing or corrupt tokenizer or an ``auto_map`` is one line naming the file)."""
    directory = Path(directory)
    refuse_auto_map(directory)
    check_tokenizer_files(directory)
    return load_tokenizer_safely(directory)
