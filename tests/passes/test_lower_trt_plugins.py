"""TensorRT plugin lowering: the nodes and attributes TensorRT's ONNX parser needs, weights that
unpack to the original INT4 values, numpy semantics of every node ≡ ONNX Runtime on the QDQ
subgraph it replaced, and everything else reported by name and left alone."""

import shutil
from collections import Counter

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest

from smoothrot.compiler.modeldir.model_dir import save_model
from smoothrot.compiler.runtime.ort_runner import OrtDecoder, session_options
from smoothrot.compiler.targets.trt.plugin_layers import gemm_layer, rotation_layer
from smoothrot.core.int4 import Grouping
from smoothrot.core.manifest import load_manifest
from smoothrot.core.qdq import QuantBits
from smoothrot.passes._graph import ACT_QUANT_MARK, ROTATION_MARK, constant_array, new_initializer
from smoothrot.passes._qdq import dynamic_qdq
from smoothrot.passes.lower_trt_plugins import LowerToTrtPluginsPass
from smoothrot.passes.online_rotation import OnlineRotationPass
from smoothrot.passes.quantize_activations import ActQuantPass
from smoothrot.passes.quantize_weights import (
    Algorithm,
    GroupingMode,
    WeightQuantConfig,
    WeightQuantPass,
)
from smoothrot.plugins.packing import unpack_int4
from smoothrot.plugins.trt_spec import NAMESPACE, PluginOp, plugin_reference

W4A16, W4A8, KRON = PluginOp.W4A16_GEMM, PluginOp.W4A8_GEMM, PluginOp.KRON_HADAMARD
X = np.random.default_rng(3).standard_normal((1, 7, 96)).astype(np.float32) * 3


def _ort(model: ir.Model, x: np.ndarray) -> np.ndarray:
    """The graph as written: fp32, no fusions (they change roundings or drop QDQ pairs)."""
    options = session_options()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    proto = ir.serde.serialize_model(model).SerializeToString()
    session = ort.InferenceSession(proto, options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _attributes(node: ir.Node) -> dict:
    return {name: attr.value for name, attr in node.attributes.items()}


def _int4_weight(model: ir.Model) -> tuple[np.ndarray, np.ndarray]:
    dq = next(n for n in model.graph if n.op_type == "DequantizeLinear" and n.inputs[0].const_value)
    return constant_array(dq.inputs[0]).astype(np.int8), constant_array(dq.inputs[1])


@pytest.mark.parametrize("grouping", list(Grouping), ids=lambda g: g.value)
@pytest.mark.parametrize("op", [W4A16, W4A8], ids=lambda o: o.value)
def test_gemm_layer_becomes_one_plugin_node(op, grouping):
    model = gemm_layer(op, 96, 64, grouping, 32)
    q, scale = _int4_weight(model)
    want = _ort(model, X)
    result = LowerToTrtPluginsPass()(model)
    assert result.modified and not result.details["skipped"]
    [node] = list(model.graph)
    assert (node.op_type, node.domain, node.name) == (op.value, NAMESPACE, "matmul")
    per_ic = int(grouping is Grouping.PER_IC)
    assert _attributes(node) == {
        "plugin_namespace": "smoothrot",
        "aot": 1,
        "k": 96,
        "n": 64,
        "per_ic": per_ic,
        "group_size": 32,
    }
    assert model.opset_imports[NAMESPACE] == 1
    x, packed, s = node.inputs
    assert x is model.graph.inputs[0]  # w4a8 reads the raw x: the QDQ nodes are gone
    assert packed.const_value.dtype == ir.DataType.INT8 and packed.shape.dims == (96, 32)
    np.testing.assert_array_equal(unpack_int4(constant_array(packed)), q)
    assert s.const_value.dtype == ir.DataType.FLOAT
    np.testing.assert_array_equal(constant_array(s), scale)
    assert set(model.graph.initializers) == {packed.name, s.name}
    got = plugin_reference(node, X)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_rotation_becomes_one_plugin_node():
    model = rotation_layer(96)
    at = constant_array(model.graph.initializers["rot.at"])
    b = constant_array(model.graph.initializers["rot.b"])
    want = _ort(model, X)
    result = LowerToTrtPluginsPass()(model)
    assert result.modified and not result.details["skipped"]
    [node] = list(model.graph)
    assert (node.op_type, node.domain, node.name) == ("kron_hadamard", NAMESPACE, "rot")
    assert _attributes(node) == {"plugin_namespace": "smoothrot", "aot": 1, "m": 12, "p": 8}
    np.testing.assert_array_equal(constant_array(node.inputs[1]), at.T)  # A, not Aᵀ
    np.testing.assert_array_equal(constant_array(node.inputs[2]), b)
    assert set(model.graph.initializers) == {"rot.a", "rot.b.1"}  # "rot.b" was taken
    assert node.metadata_props[ROTATION_MARK] == "online"
    np.testing.assert_allclose(plugin_reference(node, X), want, rtol=0, atol=1e-5)


def test_plain_matmul_is_not_touched_and_lowering_is_idempotent():
    model = gemm_layer(W4A16, 96, 64, Grouping.PER_OC, 32)
    lowering = LowerToTrtPluginsPass()
    lowering(model)
    again = lowering(model)  # the same instance again
    assert not again.modified and again.details == {"lowered": [], "skipped": {}}
    graph = model.graph
    w = new_initializer(graph, "dense", np.eye(64, dtype=np.float32))
    mm = ir.node("MatMul", [graph.outputs[0], w], name="dense_matmul")
    graph.append(mm)
    graph.outputs[0] = mm.outputs[0]
    fp = LowerToTrtPluginsPass()(model)
    assert not fp.modified and not fp.details["skipped"]
    assert [n.op_type for n in graph] == ["w4a16_gemm", "MatMul"]


def _second_matmul(model: ir.Model, zero_point: bool) -> None:
    """A second INT4 MatMul reading the same (QDQ'd) input, with or without a zero point."""
    graph = model.graph
    first = next(n for n in graph if n.op_type == "MatMul")
    dq = first.inputs[1].producer()
    inputs = list(dq.inputs)
    if zero_point:
        zp = np.zeros(constant_array(inputs[1]).shape, np.int8)
        inputs.append(new_initializer(graph, "zp", zp.astype("int4")))
    dq2 = ir.node("DequantizeLinear", inputs, attributes=_attributes(dq), name="dq2")
    mm = ir.node("MatMul", [first.inputs[0], dq2.outputs[0]], name="matmul2")
    graph.extend([dq2, mm])
    graph.outputs.append(mm.outputs[0])


def test_shared_activation_qdq_stays_while_a_matmul_still_reads_it():
    model = gemm_layer(W4A8, 96, 64, Grouping.PER_OC, 32)
    _second_matmul(model, zero_point=True)
    result = LowerToTrtPluginsPass()(model)
    assert result.modified
    assert result.details["skipped"] == {"matmul2": "has a zero point"}
    ops = [n.op_type for n in model.graph]
    assert ops.count("w4a8_gemm") == 1 and ops.count("MatMul") == 1
    assert sum(bool(n.metadata_props.get(ACT_QUANT_MARK)) for n in model.graph) == 6  # kept

    both = gemm_layer(W4A8, 96, 64, Grouping.PER_OC, 32)
    _second_matmul(both, zero_point=False)
    LowerToTrtPluginsPass()(both)
    assert [n.op_type for n in both.graph] == ["w4a8_gemm", "w4a8_gemm"]


def test_unmatched_patterns_are_reported_by_name_and_left_alone():
    int4_act = gemm_layer(W4A16, 96, 64, Grouping.PER_OC, 32)
    mm = next(n for n in int4_act.graph if n.op_type == "MatMul")
    x = int4_act.graph.inputs[0]
    mm.replace_input_with(
        0, dynamic_qdq(int4_act.graph, x, QuantBits.INT4, 96, "a", ACT_QUANT_MARK, mm)
    )
    small_group = gemm_layer(W4A16, 64, 32, Grouping.PER_OC, 8)
    raised_floor = gemm_layer(W4A8, 96, 64, Grouping.PER_IC, 32)
    tiny = raised_floor.graph.initializers["smoothrot.qdq.tiny"]
    tiny.const_value = ir.tensor(np.float32(2**-14), name=tiny.name)  # fp16's smallest normal
    rotation = rotation_layer(96)
    rotation.graph.outputs.append(
        next(n for n in rotation.graph if n.name == "rot.matmul_b").outputs[0]
    )
    cases = [
        (int4_act, "matmul", "activation QDQ is not INT8"),
        (small_group, "matmul", "prefill kernel: per-OC group 8 is not a multiple of block_k 16"),
        (raised_floor, "matmul", "activation scale is not max(absmax(x) / 127, 1e-12)"),
        (rotation, "rot", "expected only a MatMul to read the output of 'rot.matmul_b'"),
    ]
    for model, name, reason in cases:
        before = [n.op_type for n in model.graph]
        result = LowerToTrtPluginsPass()(model)
        skipped = result.details["skipped"]
        assert not result.modified
        assert list(skipped) == [name] and reason in skipped[name]
        assert [n.op_type for n in model.graph] == before


@pytest.fixture(scope="module")
def tiny_w4a8(tiny_export):
    """The tiny Llama compiled as the w4a8 recipe does: online rotations, per-IC RTN INT4
    weights (group 32), per-token INT8 activations. Built twice: QDQ and lowered."""
    src = tiny_export("llama")
    dims = load_manifest(src).dims

    def build() -> ir.Model:
        model = ir.load(src / "model.onnx")
        OnlineRotationPass(dims)(model)
        config = WeightQuantConfig(GroupingMode.PER_IC, 32, Algorithm.RTN)
        WeightQuantPass(dims, lambda _: None, config)(model)
        ActQuantPass(dims)(model)
        return model

    return src, build


def test_tiny_model_every_plugin_node_computes_what_it_replaced(tiny_w4a8, tmp_path):
    src, build = tiny_w4a8
    qdq, lowered = build(), build()
    result = LowerToTrtPluginsPass()(lowered)
    assert result.modified and not result.details["skipped"]
    assert Counter(p.plugin for p in result.details["lowered"]) == {W4A8: 2 * 7, KRON: 2 * 4}
    ops = Counter(n.op_type for n in lowered.graph)
    assert ops["w4a8_gemm"] == 14 and ops["kron_hadamard"] == 8
    assert not {"DequantizeLinear", "QuantizeLinear"} & set(ops)
    marked = [n for n in lowered.graph if n.metadata_props.get(ROTATION_MARK)]
    assert {n.op_type for n in marked} == {"kron_hadamard"}
    used = {v.name for n in lowered.graph for v in n.inputs if v is not None}
    assert set(lowered.graph.initializers) <= used  # no orphaned QDQ / rotation constants

    # Expose every plugin node's input and output in the QDQ graph and run it once.
    plugins = [n for n in lowered.graph if n.domain == NAMESPACE]
    values = {v.name: v for n in qdq.graph for v in n.outputs}
    for name in sorted({v.name for n in plugins for v in (n.inputs[0], n.outputs[0])}):
        qdq.graph.outputs.append(values[name])
    dst = tmp_path / "qdq"
    shutil.copytree(src, dst)
    for f in ("model.onnx", "model.onnx.data"):
        (dst / f).unlink()
    save_model(qdq, dst)
    decoder = OrtDecoder(dst, optimize=False)
    ids = np.random.default_rng(2).integers(0, 49152, size=(1, 20))
    feeds = {
        "input_ids": ids,
        "attention_mask": np.ones_like(ids),
        "position_ids": np.arange(20)[None, :],
    }
    feeds.update(zip(decoder.manifest.past_names, decoder.empty_cache(), strict=True))
    names = [o.name for o in decoder.session.get_outputs()]
    captured = dict(zip(names, decoder.session.run(None, feeds), strict=True))

    matmuls = {n.name: n for n in qdq.graph if n.op_type == "MatMul"}
    for node in plugins:
        want = captured[node.outputs[0].name]
        got = plugin_reference(node, captured[node.inputs[0].name])
        assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max(), node.name
        if node.op_type == "w4a8_gemm":
            dq = matmuls[node.name].inputs[1].producer()
            q = constant_array(dq.inputs[0]).astype(np.int8)
            np.testing.assert_array_equal(unpack_int4(constant_array(node.inputs[1])), q)
