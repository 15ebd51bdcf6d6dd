"""The depth-1 trace every segment is made from: each parameter found again by content, the
layer's data left out, and a model whose layers are of several kinds refused by name."""

from __future__ import annotations

import pytest

from smoothrot.compiler.modeldir.sources import resolve_source
from smoothrot.compiler.stream.checkpoint import hf_config
from smoothrot.compiler.stream.template import TEMPLATE_VOCAB, layer_param, trace_template
from smoothrot.core.errors import SmoothrotError


def test_every_parameter_is_an_initializer(tiny_model_dir):
    config = hf_config(resolve_source(tiny_model_dir("qwen2")))
    template = trace_template(config, 21)
    params = {p for p, _ in template.params.values()}
    assert "model.layers.0.self_attn.q_proj.bias" in params
    assert {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"} <= params
    assert template.dims.layers == config.num_hidden_layers
    assert template.segment_dims.vocab == TEMPLATE_VOCAB and template.segment_dims.layers == 1
    layer = set(template.layer_initializers())
    for tensor in template.proto.graph.initializer:  # the layer's data comes from a checkpoint
        assert (len(tensor.raw_data) == 0) == (tensor.name in layer), tensor.name
    assert (
        layer_param("model.layers.0.mlp.up_proj.weight", 7) == "model.layers.7.mlp.up_proj.weight"
    )
    assert layer_param("model.norm.weight", 7) == "model.norm.weight"


def test_layers_of_several_kinds_are_refused(tiny_model_dir):
    config = hf_config(resolve_source(tiny_model_dir("qwen2")))
    config.use_sliding_window, config.max_window_layers, config.sliding_window = True, 1, 64
    config.layer_types = ["full_attention", "sliding_attention"]
    with pytest.raises(SmoothrotError, match=r"2 kinds \(full_attention, sliding_attention\)"):
        trace_template(config, 21)
