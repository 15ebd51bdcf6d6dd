"""The graphs a streamed compile works on, each small enough to hold whole.

- A **layer segment** (:func:`layer_segment`) is the template with decoder layer ``k``'s weights
  (fp32, read from the checkpoint now): one layer between the template's small embedding and
  lm_head, so every pass and the model map run on it unchanged (with
  :attr:`Template.segment_dims`). The passes' fused residual rotation rotates the small
  embedding and lm_head too; those are never used again.
- The **head** (:func:`head_model`) is the template without its layer: the real embedding, the
  final norm and lm_head (``dims.layers = 0``), on which the same passes rotate, fold and
  quantize the model's ends once.

:func:`residual_names` finds, with the model map, the residual value entering the first layer
(or the final norm, in the head) and the one entering the final norm.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import onnx_ir as ir

from smoothrot.compiler.stream.checkpoint import EMBEDDING, Checkpoint
from smoothrot.compiler.stream.graph_parts import split_parts
from smoothrot.compiler.stream.template import TEMPLATE_VOCAB, Template, layer_param
from smoothrot.core.errors import SmoothrotError
from smoothrot.core.manifest import ModelDims
from smoothrot.passes.model_map import build_model_map

__all__ = ["head_dims", "head_model", "layer_segment", "residual_names", "set_vocab"]


def _fill(model: ir.Model, template: Template, checkpoint: Checkpoint, wanted: set[str], k: int):
    """Set the ``wanted`` initializers from the checkpoint. A tensor two initializers use (a
    tied lm_head) is read once; one of its untransposed uses takes it, the others get copies
    (passes transform initializers in place)."""
    uses: dict[str, list[tuple[str, bool]]] = {}
    for name in sorted(wanted):
        param, transposed = template.params[name]
        stored = checkpoint.stored_name(layer_param(param, k))
        uses.setdefault(stored, []).append((name, transposed))
    for stored, names in uses.items():
        original = checkpoint.get(stored)
        names.sort(key=lambda use: use[1])  # the untransposed uses first
        for i, (name, transposed) in enumerate(names):
            source = original.T if transposed else original
            if i == 0:
                array = np.ascontiguousarray(source, np.float32)
            else:
                array = np.array(source, np.float32, order="C")
            value = model.graph.initializers[name]
            value.const_value = ir.tensor(array, name=name)
            value.shape = ir.Shape(array.shape)


def layer_segment(template: Template, checkpoint: Checkpoint, k: int) -> ir.Model:
    """The template graph with decoder layer ``k``'s weights (fp32, in memory)."""
    model = ir.serde.deserialize_model(template.proto)
    _fill(model, template, checkpoint, set(template.layer_initializers()), k)
    return model


def residual_names(model: ir.Model, dims: ModelDims) -> tuple[str, str]:
    """(residual into the first layer, residual into the final norm), by the model map."""
    mm = build_model_map(model, dims).require()
    assert mm.final_norm is not None
    first = mm.layers[0].attn_norm.input if mm.layers else mm.final_norm.input
    names = first.name, mm.final_norm.input.name
    if names[0] is None or names[1] is None:
        raise SmoothrotError("streaming: the residual stream has unnamed values")
    return names[0], names[1]


def head_dims(dims: ModelDims) -> ModelDims:
    return replace(dims, layers=0)


def set_vocab(graph: onnx.GraphProto, vocab: int) -> None:
    """Value shapes that carry the template's vocabulary get the real one."""
    for vi in [*graph.value_info, *graph.output, *graph.input]:
        for dim in vi.type.tensor_type.shape.dim:
            if dim.HasField("dim_value") and dim.dim_value == TEMPLATE_VOCAB:
                dim.dim_value = vocab


def head_model(template: Template, checkpoint: Checkpoint) -> ir.Model:
    """Embedding → final norm → lm_head with the checkpoint's weights (the layer cut out)."""
    proto = onnx.ModelProto()
    proto.CopyFrom(template.proto)
    seg = ir.serde.deserialize_model(template.proto)
    h_in, h_out = residual_names(seg, template.segment_dims)
    g = proto.graph
    kv_in = [i.name for i in g.input if i.name.startswith("past.")]
    kv_out = [o.name for o in g.output if o.name.startswith("present.")]
    parts = split_parts(g, h_in, h_out, kv_in, kv_out)
    nodes = list(g.node)
    keep = [nodes[i] for i in parts.prefix + parts.suffix]
    for node in keep:
        for j, x in enumerate(node.input):
            if x == h_out:
                node.input[j] = h_in
    del g.node[:]
    g.node.extend(keep)
    outputs = [o for o in g.output if not o.name.startswith("present.")]
    del g.output[:]
    g.output.extend(outputs)
    set_vocab(g, template.dims.vocab)
    model = ir.serde.deserialize_model(proto)
    _prune(model)
    ends = {n for n, (p, _) in template.params.items() if not p.startswith("model.layers.")}
    _fill(model, template, checkpoint, ends & set(model.graph.initializers), 0)
    if EMBEDDING not in {template.params[n][0] for n in ends}:
        raise SmoothrotError("streaming: the traced graph has no embedding table")
    return model


def _prune(model: ir.Model) -> None:
    """Drop nodes nothing reads (the mask and rotary tables without a layer), then unused
    initializers and inputs."""
    graph = model.graph
    changed = True
    while changed:
        changed = False
        for node in reversed(list(graph)):
            if not any(o.uses() or o.is_graph_output() for o in node.outputs):
                graph.remove(node, safe=True)
                changed = True
    for name in [n for n, v in graph.initializers.items() if not v.uses()]:
        graph.initializers.pop(name)
    keep = [v for v in graph.inputs if v.uses() or v.name == "input_ids"]
    graph.inputs.clear()
    graph.inputs.extend(keep)
