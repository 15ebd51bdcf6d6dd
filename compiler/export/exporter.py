"""HF model → one ONNX decoder graph with KV cache (torch dynamo exporter), weights external.

The graph has inputs ``input_ids [B,S]``, ``attention_mask [B,P+S]``, ``position_ids [B,S]``
and ``past.{i}.key/value [B,KV,P,D]``; outputs ``logits [B,S,V]`` and ``present.{i}.key/value
[B,KV,P+S,D]``. Prefill is the same graph with ``P = 0``.

After tracing, every MatMul weight initializer is renamed to ``<module>.weight_t`` (it holds
``Wᵀ``, shape ``[K_in, N_out]``), found by *content* (a digest of the torch parameter), so layer
identity never depends on the exporter's node or value names.
"""

from __future__ import annotations

import hashlib
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir
import torch

from smoothrot.compiler import __version__
from smoothrot.compiler.config import ExportConfig
from smoothrot.compiler.export.unfuse import unfuse_projections
from smoothrot.compiler.export.wrapper import FlatCacheDecoder, io_names
from smoothrot.compiler.modeldir.model_dir import copy_licenses, save_model, save_tokenizer
from smoothrot.compiler.modeldir.outdir import atomic_output_dir, check_output_dir
from smoothrot.compiler.modeldir.sources import ModelSource, load_torch_model
from smoothrot.core.errors import SmoothrotError
from smoothrot.core.manifest import Manifest, ModelDims
from smoothrot.passes.fold_transposed_weights import FoldTransposedWeightsPass

__all__ = ["export_model", "model_dims", "name_weights", "tool_versions", "trace_decoder"]

log = logging.getLogger("smoothrot.export")
_WRAPPER_PREFIX = "model."  # FlatCacheDecoder stores the HF model as `self.model`


def model_dims(config: Any) -> ModelDims:
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return ModelDims(
        hidden=config.hidden_size,
        layers=config.num_hidden_layers,
        heads=heads,
        kv_heads=getattr(config, "num_key_value_heads", None) or heads,
        head_dim=head_dim,
        intermediate=config.intermediate_size,
        vocab=config.vocab_size,
    )


def _example_inputs(dims: ModelDims, dtype: torch.dtype) -> tuple[Any, ...]:
    # Sizes > 1 and distinct, so the tracer keeps every axis symbolic.
    batch, seq, past = 2, 5, 3
    ids = torch.randint(0, dims.vocab, (batch, seq))
    mask = torch.ones(batch, past + seq, dtype=torch.int64)
    pos = torch.arange(past, past + seq).unsqueeze(0).expand(batch, seq).contiguous()
    cache = [
        torch.randn(batch, dims.kv_heads, past, dims.head_dim, dtype=dtype)
        for _ in range(2 * dims.layers)
    ]
    return ids, mask, pos, cache


def _dynamic_shapes(layers: int) -> tuple[Any, ...]:
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    past, total = torch.export.Dim("past"), torch.export.Dim("total")
    kv = [{0: batch, 2: past} for _ in range(2 * layers)]
    return {0: batch, 1: seq}, {0: batch, 1: total}, {0: batch, 1: seq}, kv


def _digest(array: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(array).tobytes(), digest_size=16).hexdigest()


def name_weights(model: ir.Model, hf_model: torch.nn.Module) -> dict[str, str]:
    """Rename MatMul weight initializers to ``<module>.weight_t`` by matching content."""
    by_digest: dict[str, str] = {}
    for name, module in hf_model.named_modules():
        if isinstance(module, torch.nn.Linear):
            by_digest[_digest(module.weight.detach().T.numpy())] = name
    for init in list(model.graph.initializers.values()):
        if init.name and init.name.startswith(_WRAPPER_PREFIX):
            init.name = init.name[len(_WRAPPER_PREFIX) :]
    weights: dict[str, str] = {}
    for node in model.graph:
        if node.op_type != "MatMul" or len(node.inputs) < 2:
            continue
        b = node.inputs[1]
        if b is None or not b.is_initializer() or b.const_value is None:
            continue
        module = by_digest.get(_digest(b.const_value.numpy()))
        if module is None or module in weights:
            continue
        if b.name != f"{module}.weight_t":
            b.name = f"{module}.weight_t"
        weights[module] = b.name
    missing = sorted(set(by_digest.values()) - set(weights))
    if missing:
        raise SmoothrotError(
            f"export: {len(missing)} Linear layers have no MatMul weight in the graph "
            f"(e.g. {missing[0]}); this model pattern is not supported"
        )
    return weights


def tool_versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import transformers

    return {
        "smoothrot": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
        "onnx_ir": ir.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def trace_decoder(hf_model: torch.nn.Module, dims: ModelDims, opset: int) -> ir.Model:
    """The dynamo trace of ``hf_model`` with a flat KV cache (see module docstring), its
    transposed weights folded into initializers; refuses an exporter that fell back to another
    opset."""
    inputs, outputs = io_names(dims.layers)
    dtype = next(hf_model.parameters()).dtype
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            FlatCacheDecoder(hf_model).eval(),
            _example_inputs(dims, dtype),
            dynamo=True,
            dynamic_shapes=_dynamic_shapes(dims.layers),
            input_names=inputs,
            output_names=outputs,
            opset_version=opset,
            optimize=True,
            verbose=False,
        )
    model = program.model
    written = model.opset_imports.get("")
    if written != opset:  # the exporter falls back silently where it cannot convert
        raise SmoothrotError(f"--opset {opset}: the torch exporter wrote opset {written} instead")
    FoldTransposedWeightsPass()(model)
    return model


def export_model(source: ModelSource, out: Path, config: ExportConfig) -> Manifest:
    """Trace ``source`` and write ``out`` atomically (model, tokenizer, manifest)."""
    out = Path(out)
    check_output_dir(out, inputs=[source.path])
    t0 = time.perf_counter()
    hf_model, tokenizer = load_torch_model(source, config.dtype.torch, config.allow_pickle)
    hf_model = unfuse_projections(hf_model)  # Phi-3: q/k/v and gate/up as their own MatMuls
    dims = model_dims(hf_model.config)
    inputs, outputs = io_names(dims.layers)
    log.info(
        "loaded %s (%s) in %.1fs", source.path.name, source.architecture, time.perf_counter() - t0
    )
    t1 = time.perf_counter()
    model = trace_decoder(hf_model, dims, config.opset)
    weights = name_weights(model, hf_model)
    trace_s = time.perf_counter() - t1
    log.info("traced %d nodes in %.1fs", len(model.graph), trace_s)
    manifest = Manifest(
        source=source.describe(),
        architecture=source.architecture,
        dims=dims,
        opset=config.opset,
        dtype=config.dtype,
        inputs=inputs,
        outputs=outputs,
        versions=tool_versions(),
        weights=weights,
        stages=[{"stage": "export", "seconds": round(time.perf_counter() - t0, 1)}],
    )
    with atomic_output_dir(out, inputs=[source.path]) as tmp:
        save_model(model, tmp)
        save_tokenizer(tokenizer, tmp)  # tokenizer data only, never a source's code
        copy_licenses(source.licenses, tmp)
        manifest.save(tmp)
    return manifest
