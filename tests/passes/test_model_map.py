"""The model map: roles found structurally, opset-23 RMSNormalization, unknown patterns named."""

import numpy as np
import onnx_ir as ir
import pytest
from safetensors.numpy import load_file

from smoothrot.core.manifest import ModelDims, load_manifest
from smoothrot.passes.model_map import ModelMapError, build_model_map
from tests.conftest import TINY_ARCHITECTURES

HEAD_NORMS, POST_NORMS, ONE_PLUS_GAMMA = {"qwen3", "gemma3"}, {"gemma3"}, {"gemma3"}


def _dims(layers: int, vocab: int) -> ModelDims:
    return ModelDims(
        hidden=8, layers=layers, heads=2, kv_heads=1, head_dim=4, intermediate=16, vocab=vocab
    )


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_roles_match_the_torch_modules(tiny_export, tiny_model_dir, arch):
    manifest = load_manifest(tiny_export(arch))
    mm = build_model_map(ir.load(tiny_export(arch) / "model.onnx"), manifest.dims).require()
    assert len(mm.layers) == 2
    name = {w: m for m, w in manifest.weights.items()}
    for layer in mm.layers:
        got = [name[lin.name] for lin in layer.linears()]
        roles = [
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        ]
        assert got == [f"model.layers.{layer.index}.{r}" for r in roles]
        assert (layer.q.bias is not None) == (arch == "qwen2")
        assert (layer.q_norm is not None) == (layer.k_norm is not None) == (arch in HEAD_NORMS)
        assert (len(layer.post_norms()) == 2) == (arch in POST_NORMS)
    assert name[mm.lm_head.name] == "lm_head"
    torch_weights = load_file(tiny_model_dir(arch) / "model.safetensors")
    gamma = torch_weights["model.norm.weight"].astype(np.float32)
    if arch in ONE_PLUS_GAMMA:  # folded by the exporter into one constant
        assert np.array_equal(mm.final_norm.gamma.const_value.numpy(), 1 + gamma)
    else:
        assert mm.final_norm.gamma.name == "model.norm.weight"
    assert mm.embedding is not None and mm.embedding.op_type == "Gather"


def _extra_norm(model: ir.Model, x: ir.Value) -> ir.Value:
    """A decomposed RMSNorm of ``x`` (its own γ) whose output is a graph output."""

    def const(name: str, array) -> ir.Value:
        value = ir.Value(name=name, const_value=ir.tensor(np.asarray(array), name=name))
        model.graph.register_initializer(value)
        return value

    width = x.shape[-1] if x.shape is not None else 1
    two, eps = const("extra.two", np.float32(2)), const("extra.eps", np.float32(1e-6))
    axes = const("extra.axes", np.array([-1], np.int64))
    gamma = const("extra.gamma", np.full(width, 1.5, np.float32))
    pow_ = ir.node("Pow", [x, two])
    mean = ir.node("ReduceMean", [pow_.outputs[0], axes], attributes={"keepdims": 1})
    add = ir.node("Add", [mean.outputs[0], eps])
    sqrt = ir.node("Sqrt", [add.outputs[0]])
    inv = ir.node("Reciprocal", [sqrt.outputs[0]])
    normed = ir.node("Mul", [x, inv.outputs[0]])
    out = ir.node("Mul", [gamma, normed.outputs[0]])
    for node in (pow_, mean, add, sqrt, inv, normed, out):
        model.graph.append(node)
    out.outputs[0].name = "extra.out"
    model.graph.outputs.append(out.outputs[0])
    return gamma


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_a_norm_of_no_known_role_is_named(tiny_export, arch):
    """A norm that feeds no MatMul, follows no o_proj/down_proj and is no q/k norm is reported
    by its γ, never skipped."""
    model = ir.load(tiny_export(arch) / "model.onnx")
    dims = load_manifest(tiny_export(arch)).dims
    layer = build_model_map(model, dims).require().layers[0]
    gamma = _extra_norm(model, layer.mlp_norm.input)
    problems = build_model_map(model, dims).problems
    assert problems == [
        f"RMSNorm with γ {gamma.name!r} is neither before a MatMul, nor after o_proj/down_proj, "
        "nor a per-head q/k norm"
    ]


def test_opset23_rmsnormalization_is_recognized():
    model = ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 23]>
        g (float[1, 3, 8] x) => (float[1, 3, 5] logits)
        <float[8] gamma = {1, 2, 3, 4, 5, 6, 7, 8}, float[8, 5] w = {0,0,0,0,0,0,0,0,0,0,
            0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0}>
        {
            n = RMSNormalization <axis = -1> (x, gamma)
            logits = MatMul(n, w)
        }
        """
    )
    mm = build_model_map(model, _dims(0, 5))
    assert mm.problems == ["expected one embedding Gather, found 0"]  # none in this snippet
    assert mm.final_norm.node.op_type == "RMSNormalization"
    assert mm.lm_head.weight.name == "w"


def test_unrecognized_graph_is_reported_by_name():
    model = ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 21]>
        g (float[1, 3, 8] x) => (float[1, 3, 8] y)
        <float[8, 8] w = {0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,
            0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0}>
        { y = MatMul(x, w) }
        """
    )
    mm = build_model_map(model, _dims(1, 8))
    assert mm.problems == ["found 0 RMSNorms that feed MatMuls, expected 3"]
    with pytest.raises(ModelMapError, match="unrecognized model pattern: found 0 RMSNorms"):
        mm.require()


def test_no_graph_outlives_its_model(tiny_export):
    """The model map's patterns (and the activation-QDQ scale pattern) keep nothing: once the
    model is dropped, its graph is freed (a streamed compile drops multi-GB heads this way)."""
    import gc
    import weakref

    from smoothrot.passes.rules.act_qdq import ActQdqPair

    def match_everything() -> weakref.ref:
        model = ir.load(tiny_export("llama") / "model.onnx")
        dims = load_manifest(tiny_export("llama")).dims
        build_model_map(model, dims).require()
        for node in list(model.graph):
            ActQdqPair(dims.hidden).match(model, model.graph, node)
        return weakref.ref(model.graph)

    graph = match_everything()
    gc.collect()
    assert graph() is None
