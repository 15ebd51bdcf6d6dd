"""The decoder traced once, at depth 1: the graph every streamed segment is made from.

The model's own config is traced with one decoder layer and a small vocabulary
(:data:`TEMPLATE_VOCAB`, a prime no real dimension is), every parameter filled with distinct
random values so that the exporter merges none of them and each initializer is found again by
content: ``params`` maps each initializer that holds a parameter to that parameter's name and
whether it holds its transpose (a MatMul's ``B = Wᵀ``). The traced layer reads
``model.layers.0.*``; a segment for layer ``k`` is the same graph with layer ``k``'s weights.

The vocabulary must not leak into the graph as a constant (the real one replaces it in the
embedding and lm_head only): a template whose integer constants hold it is refused.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import torch

from smoothrot.compiler.export.exporter import model_dims, name_weights, trace_decoder
from smoothrot.compiler.modeldir.untrusted import quiet_transformers
from smoothrot.core.errors import SmoothrotError
from smoothrot.core.manifest import ModelDims

__all__ = ["TEMPLATE_VOCAB", "Template", "layer_param", "trace_template"]

TEMPLATE_VOCAB = 1031


def layer_param(name: str, index: int) -> str:
    """The checkpoint name of template parameter ``name`` in decoder layer ``index``."""
    prefix = "model.layers.0."
    return f"model.layers.{index}." + name[len(prefix) :] if name.startswith(prefix) else name


@dataclass
class Template:
    """``proto``: the depth-1 graph (layer parameters without data); ``params``: initializer →
    (parameter name, transposed); ``weights``: module → MatMul weight initializer (layer 0,
    embedding-free); ``dims``: the real model's dimensions."""

    proto: onnx.ModelProto
    params: dict[str, tuple[str, bool]]
    weights: dict[str, str]
    dims: ModelDims

    @property
    def segment_dims(self) -> ModelDims:
        """The dimensions of one segment: one layer, the template's vocabulary."""
        d = self.dims
        return ModelDims(
            d.hidden, 1, d.heads, d.kv_heads, d.head_dim, d.intermediate, TEMPLATE_VOCAB
        )

    def layer_initializers(self) -> list[str]:
        return [i for i, (p, _) in self.params.items() if p.startswith("model.layers.0.")]


def _digest(array: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(array).tobytes(), digest_size=16).hexdigest()


def _param_table(model: ir.Model, hf_model: torch.nn.Module) -> dict[str, tuple[str, bool]]:
    by_digest: dict[str, tuple[str, bool]] = {}
    for name, p in hf_model.named_parameters():
        a = p.detach().numpy()
        by_digest[_digest(a)] = (name, False)
        if a.ndim == 2:
            by_digest[_digest(a.T)] = (name, True)
    table: dict[str, tuple[str, bool]] = {}
    for value in model.graph.initializers.values():
        if value.const_value is None or value.name is None:
            continue
        found = by_digest.get(_digest(value.const_value.numpy()))
        if found is not None:
            table[value.name] = found
    missing = sorted({n for n, _ in hf_model.named_parameters()} - {n for n, _ in table.values()})
    if missing:
        raise SmoothrotError(
            f"streaming: parameter {missing[0]} has no initializer in the traced graph (the "
            "exporter transformed it); this model pattern cannot be streamed"
        )
    return table


def _refuse_vocab_constants(model: ir.Model, params: dict[str, tuple[str, bool]]) -> None:
    for value in model.graph.initializers.values():
        if value.name in params or value.const_value is None:
            continue
        array = value.const_value.numpy()
        if array.dtype.kind in "iu" and array.size <= 16 and np.any(array == TEMPLATE_VOCAB):
            raise SmoothrotError(
                f"streaming: constant {value.name} of the traced graph holds the vocabulary size; "
                "this model pattern cannot be streamed"
            )


def trace_template(config: Any, opset: int) -> Template:
    """Trace ``config``'s decoder at depth 1 with the template vocabulary (seconds on any size:
    one layer's weights, random)."""
    from transformers import AutoModelForCausalLM

    dims = model_dims(config)
    kinds = sorted(set(getattr(config, "layer_types", None) or []))
    if len(kinds) > 1:
        raise SmoothrotError(
            f"streaming: the layers are of {len(kinds)} kinds ({', '.join(kinds)}) and one traced "
            "layer stands for all of them; compile this model with --stream off"
        )
    small = config.__class__.from_dict(config.to_dict())
    small.num_hidden_layers, small.vocab_size, small.tie_word_embeddings = 1, TEMPLATE_VOCAB, False
    if getattr(small, "layer_types", None):
        small.layer_types = small.layer_types[:1]
    torch.manual_seed(0)
    with quiet_transformers():
        hf_model = AutoModelForCausalLM.from_config(small, dtype=torch.float32).eval()
    with torch.no_grad():
        for p in hf_model.parameters():
            p.uniform_(0.5, 1.5) if p.ndim == 1 else p.normal_(0.0, 0.02)
    model = trace_decoder(hf_model, model_dims(small), opset)
    weights = name_weights(model, hf_model)
    params = _param_table(model, hf_model)
    _refuse_vocab_constants(model, params)
    proto = ir.serde.serialize_model(model)
    layer = {i for i, (p, _) in params.items() if p.startswith("model.layers.0.")}
    for tensor in proto.graph.initializer:
        if tensor.name in layer:  # each segment brings its own layer's data
            tensor.ClearField("raw_data")
            tensor.ClearField("float_data")
    return Template(proto, params, weights, dims)
