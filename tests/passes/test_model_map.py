"""The model map: roles found structurally, opset-23 RMSNormalization, unknown patterns named."""

import onnx_ir as ir
import pytest

from smoothrot.core.manifest import ModelDims, load_manifest
from smoothrot.passes.model_map import ModelMapError, build_model_map
from tests.conftest import TINY_ARCHITECTURES


def _dims(layers: int, vocab: int) -> ModelDims:
    return ModelDims(
        hidden=8, layers=layers, heads=2, kv_heads=1, head_dim=4, intermediate=16, vocab=vocab
    )


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_roles_match_the_torch_modules(tiny_export, arch):
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
    assert name[mm.lm_head.name] == "lm_head"
    assert mm.final_norm.gamma.name == "model.norm.weight"
    assert mm.embedding is not None and mm.embedding.op_type == "Gather"


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
    assert mm.problems and "found 0 RMSNorms, expected 3" in mm.problems[0]
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
