"""TorchGraph: the ONNX graph run by torch ops equals ONNX Runtime, differentiably."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch

from smoothrot.compiler.compile import compile_model
from smoothrot.compiler.config import CompileConfig
from smoothrot.compiler.recipes import Recipe
from smoothrot.compiler.tune.graph_blocks import decoder_blocks, head_nodes
from smoothrot.compiler.tune.torch_graph import TorchGraph, torch_feeds
from smoothrot.core.manifest import Manifest
from smoothrot.passes.model_map import ModelMapError, build_model_map
from smoothrot.passes.quantize_weights import Algorithm, GroupingMode, WeightQuantConfig
from tests.helpers import check_torch_logits_match_ort, load_graph


@pytest.fixture(scope="module")
def tiny_w4a4(tiny_export, tmp_path_factory):
    """The tiny llama compiled with w4a4 (online rotations, INT4 activation QDQ, INT4 weights)."""
    out = tmp_path_factory.mktemp("tg") / "w4a4"
    weights = WeightQuantConfig(GroupingMode.PER_OC, 32, Algorithm.RTN)
    config = CompileConfig(Recipe.W4A4, weights=weights, calibration_tokens=1024, evaluate=False)
    compile_model(out, config, onnx_dir=tiny_export("llama"))
    return out


def _ids(manifest: Manifest, batch: int, seq: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, manifest.dims.vocab, (batch, seq))


def _act_qdq_nodes(block_nodes) -> list[ir.Node]:
    """Abs → ReduceMax → Div → Max → QuantizeLinear → DequantizeLinear of the first quantizer."""
    quant = next(n for n in block_nodes if n.op_type == "QuantizeLinear")
    scale = quant.inputs[1].producer()
    div = scale.inputs[0].producer()
    amax = div.inputs[0].producer()
    return [amax.inputs[0].producer(), amax, div, scale, quant, *quant.outputs[0].consumers()]


def _one_node_model(text: str) -> ir.Model:
    return ir.from_onnx_text(f'<ir_version: 10, opset_import: ["" : 21]>\n{text}')


# One-node graphs whose edge cases (clamping, negative indices, ties, saturation) must match ORT.
_OPS = {
    "slice": (
        "(float[4,6] x) => (float[a,b] y) { s = Constant <value_ints = [-1, 100]> ()\n"
        "e = Constant <value_ints = [-100, -7]> ()\n ax = Constant <value_ints = [1, 0]> ()\n"
        "st = Constant <value_ints = [-2, 1]> ()\n y = Slice (x, s, e, ax, st) }",
        {"x": np.arange(24, dtype=np.float32).reshape(4, 6)},
    ),
    "reshape": (
        "(float[2,3,4] x) => (float[a,b] y) { s = Constant <value_ints = [0, -1]> ()\n"
        "y = Reshape (x, s) }",
        {"x": np.arange(24, dtype=np.float32).reshape(2, 3, 4)},
    ),
    "gather": (
        "(float[5,3] x, int64[2,2] i) => (float[2,2,3] y) { y = Gather <axis = 0> (x, i) }",
        {"x": np.arange(15, dtype=np.float32).reshape(5, 3), "i": np.array([[-1, 0], [2, -5]])},
    ),
    "qdq_int4_blocked": (
        "(float[2,6] x, float[2,2] s) => (float[2,6] y) {"
        " q = QuantizeLinear <axis = 1, block_size = 3, output_dtype = 22> (x, s)\n"
        " y = DequantizeLinear <axis = 1, block_size = 3> (q, s) }",
        {
            "x": np.array([[0.5, 1.5, 2.5, -0.5, -1.5, 9.0], [-9.0, 3.49, -3.5, 7.5, 0, 1]], "f4"),
            "s": np.array([[1.0, 0.5], [1.0, 1.0]], np.float32),
        },
    ),
    "qdq_uint8_axis": (
        "(float[3,2] x, float[2] s, uint8[2] z) => (float[3,2] y) {"
        " q = QuantizeLinear <axis = 1> (x, s, z)\n y = DequantizeLinear <axis = 1> (q, s, z) }",
        {
            "x": np.array([[0.1, -3.0], [1.25, 300.0], [-0.75, 2.5]], np.float32),
            "s": np.array([0.5, 1.0], np.float32),
            "z": np.array([3, 128], np.uint8),
        },
    ),
    "shape_range_expand": (
        "(float[3,4] x) => (int64[a,b] y) { s = Shape <start = -1> (x)\n"
        "z = Constant <value = int64 {0}> ()\n one = Constant <value = int64 {1}> ()\n"
        "n = Squeeze (s)\n r = Range (z, n, one)\n t = Constant <value_ints = [2, 1]> ()\n"
        "y = Expand (r, t) }",
        {"x": np.zeros((3, 4), np.float32)},
    ),
    "int_div_where": (
        "(int64[4] a, int64[4] b) => (int64[4] y) { d = Div (a, b)\n c = Less (a, b)\n"
        "y = Where (c, d, a) }",
        {"a": np.array([-7, 7, 3, 9]), "b": np.array([2, -2, 5, 4])},
    ),
}


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_fp32_graph_logits_match_onnx_runtime(tiny_export, arch):
    check_torch_logits_match_ort(tiny_export(arch), 2, 16)  # measured: 4e-7 of max |logits|


def test_w4a4_graph_logits_match_onnx_runtime(tiny_w4a4):
    # Torch and ORT differ only by fp32 summation order, which could flip a quantizer's round at
    # a .5 boundary; none flips here (measured: 3e-7 of max |logits|), so the tolerance stays.
    check_torch_logits_match_ort(tiny_w4a4, 2, 16)


def test_prologue_blocks_and_head_reproduce_the_whole_graph(tiny_w4a4):
    model, manifest = load_graph(tiny_w4a4)
    ids = _ids(manifest, 2, 12)
    runner = TorchGraph(model)
    prologue, blocks = decoder_blocks(model, manifest.dims)
    layers = build_model_map(model, manifest.dims).require().layers
    assert [b.input for b in blocks] == [layer.attn_norm.input.name for layer in layers]
    assert any(n.op_type == "Gather" for n in prologue)  # the embedding
    seen = [id(n) for part in (prologue, *(b.nodes for b in blocks)) for n in part]
    assert len(seen) == len(set(seen))
    for layer, block in zip(layers, blocks, strict=True):  # weights dequantize in their block
        assert all(lin.dequantize in block.nodes for lin in layer.linears())
    needed = {v.name for b in blocks for n in b.nodes for v in n.inputs if v is not None}
    with torch.no_grad():
        whole = runner.run(torch_feeds(manifest, ids), keep=["logits"])["logits"]
        env = runner.run(torch_feeds(manifest, ids), prologue, keep=needed)
        x = env[blocks[0].input]
        for block in blocks:
            x = runner.run({**env, block.input: x}, block.nodes, keep=[block.output])[block.output]
        head = head_nodes(model, manifest.dims)
        logits = runner.run({blocks[-1].output: x}, head, keep=["logits"])["logits"]
    assert {n.op_type for n in head} >= {"MatMul", "ReduceMean"}
    assert (logits - whole).abs().max() <= 1e-6


def test_gradient_reaches_an_int4_weight_scale(tiny_w4a4):
    model, manifest = load_graph(tiny_w4a4)
    runner = TorchGraph(model)
    prologue, blocks = decoder_blocks(model, manifest.dims)
    dq = build_model_map(model, manifest.dims).require().layers[0].q.dequantize
    assert dq is not None and dq.inputs[1] is not None
    name = dq.inputs[1].name or ""
    base = runner.constant(name)
    assert base is not None and base.dim() == 2  # blocked: [K / group, N]
    scale = torch.nn.Parameter(base.clone())
    feeds = torch_feeds(manifest, _ids(manifest, 1, 8))
    with torch.no_grad():
        env = {**feeds, **runner.run(feeds, prologue)}
    out = runner.run(env, blocks[0].nodes, overrides={name: scale}, keep=[blocks[0].output])
    out[blocks[0].output].pow(2).mean().backward()
    assert scale.grad is not None and torch.isfinite(scale.grad).all()
    assert (scale.grad != 0).any()


def test_straight_through_round_passes_gradient(tiny_w4a4):
    model, manifest = load_graph(tiny_w4a4)
    _, blocks = decoder_blocks(model, manifest.dims)
    nodes = _act_qdq_nodes(blocks[0].nodes)
    x_name, y_name = nodes[-2].inputs[0].name, nodes[-1].outputs[0].name
    torch.manual_seed(0)
    x0, weight = torch.randn(6, manifest.dims.hidden), torch.randn(6, manifest.dims.hidden)
    grads, ys = [], []
    for ste in (True, False):
        x = torch.nn.Parameter(x0.clone())
        y = TorchGraph(model, straight_through=ste).run({x_name: x}, nodes, keep=[y_name])[y_name]
        (y * weight).sum().backward()
        grads.append(x.grad)
        ys.append(y.detach())
    assert torch.equal(ys[0], ys[1])  # the forward is the same round
    # Without STE only the scale path (each row's argmax) carries gradient; with it, all do.
    assert (grads[0] != 0).all()
    assert int((grads[1] != 0).sum()) <= 6


def test_unknown_op_and_missing_input_are_named():
    model = _one_node_model("g (float[2,2] x) => (float y) { y = Det (x) }")
    with pytest.raises(NotImplementedError, match="Det"):
        TorchGraph(model).run({"x": torch.eye(2)})
    custom = _one_node_model("g (float[2] x) => (float[2] y) { y = my.domain.Foo (x) }")
    with pytest.raises(NotImplementedError, match="my.domain::Foo"):
        TorchGraph(custom).run({"x": torch.ones(2)})
    with pytest.raises(KeyError, match="'x' read by node"):
        TorchGraph(custom).run({})


@pytest.mark.parametrize("case", sorted(_OPS))
def test_edge_cases_match_onnx_runtime(case):
    body, feeds = _OPS[case]
    model = _one_node_model(f"g {body}")
    proto = ir.serde.serialize_model(model)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    (ref,) = session.run(None, feeds)
    env = {k: torch.from_numpy(v) for k, v in feeds.items()}
    ours = TorchGraph(model).run(env)[model.graph.outputs[0].name or ""]
    assert ours.dtype == torch.from_numpy(ref).dtype
    np.testing.assert_array_equal(ours.numpy(), ref)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_matches_onnx_runtime(approximate):
    """Both GeLU forms (Gemma's GeGLU is the tanh one), to fp32 rounding: the two libraries
    evaluate tanh / erf differently."""
    model = _one_node_model(
        f'g (float[7] x) => (float[7] y) {{ y = Gelu <approximate = "{approximate}"> (x) }}'
    )
    x = np.array([-6.0, -3.0, -0.5, 0.0, 0.7, 4.0, 9.5], np.float32)
    proto = ir.serde.serialize_model(model)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    (ref,) = session.run(None, {"x": x})
    ours = TorchGraph(model).run({"x": torch.from_numpy(x)})["y"].numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)
    assert not np.allclose(ours, np.maximum(x, 0), atol=1e-3)  # not a ReLU: the curve is there


def test_a_block_reading_another_blocks_value_is_refused(tiny_export):
    model, manifest = load_graph(tiny_export("llama"))
    softmax = [n for n in model.graph if n.op_type == "Softmax"]  # one per layer
    leak = ir.node("Add", [softmax[1].inputs[0], softmax[0].outputs[0]], name="leak")
    model.graph.insert_before(softmax[1], leak)
    softmax[1].replace_input_with(0, leak.outputs[0])
    with pytest.raises(ModelMapError, match=f"block 1 reads '{softmax[0].outputs[0].name}'"):
        decoder_blocks(model, manifest.dims)
