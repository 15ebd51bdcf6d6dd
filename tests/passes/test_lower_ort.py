"""ORT lowering: MatMulNBits packing, per-OC / per-IC rewrites exact at level 0, norms as Div."""

import tracemalloc

import ml_dtypes
import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest

from smoothrot.compiler.measure.layer_graphs import linear_layer_model, quantized_layer_weight
from smoothrot.compiler.runtime.ort_runner import OrtDecoder
from smoothrot.core.int4 import Grouping
from smoothrot.core.manifest import load_manifest
from smoothrot.ortops.library import register as register_ortops
from smoothrot.passes.lower_ort import (
    KERNEL_OPS,
    LowerToMatMulNBitsPass,
    PerIcKernel,
    PerOcKernel,
    matmulnbits_block,
    pack_matmulnbits,
)
from smoothrot.passes.norm_div import NormDivPass
from smoothrot.passes.quantize_weights import (
    Algorithm,
    GroupingMode,
    WeightQuantConfig,
    WeightQuantPass,
)
from tests.helpers import save_copy

IDS = np.random.default_rng(3).integers(0, 49152, size=(1, 24))


def _run(model: ir.Model, x: np.ndarray) -> np.ndarray:
    proto = ir.serde.serialize_model(model).SerializeToString()
    options = ort.SessionOptions()
    register_ortops(options, build=True)
    session = ort.InferenceSession(proto, options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_block_choice_and_packing_layout():
    assert [matmulnbits_block(n) for n in (576, 1536, 128, 48, 20)] == [64, 256, 128, 16, 0]
    q = np.array([[-8, 7], [3, -1], [0, 5]])  # K=3, N=2, padded to one block of 16
    packed = pack_matmulnbits(q, 16)
    assert packed.shape == (2, 1, 8)
    assert packed[0, 0, 0] == (0 | (11 << 4)) and packed[0, 0, 1] == 8 | (8 << 4)
    assert packed[1, 0, 0] == (15 | (7 << 4)) and packed[1, 0, 1] == 13 | (8 << 4)
    with pytest.raises(ValueError, match=r"\[-8, 7\]"):
        pack_matmulnbits(np.array([[8]]), 16)


KERNELS = [  # grouping, group, kernels, the single node expected (None: the split form)
    (Grouping.PER_OC, 16, (PerIcKernel.ORTOPS, PerOcKernel.MATMULNBITS), "MatMulNBits"),
    (Grouping.PER_OC, 64, (PerIcKernel.ORTOPS, PerOcKernel.ORTOPS), "MatMulInt4PerOC"),
    (Grouping.PER_OC, 32, (PerIcKernel.ORTOPS, PerOcKernel.ORTOPS), "MatMulNBits"),  # < 64
    (Grouping.PER_IC, 16, (PerIcKernel.ORTOPS, PerOcKernel.ORTOPS), "MatMulInt4PerIC"),
    (Grouping.PER_IC, 16, (PerIcKernel.SPLIT, PerOcKernel.ORTOPS), None),
]


@pytest.mark.parametrize(("grouping", "group", "kernels", "op"), KERNELS)
@pytest.mark.parametrize("shape", [(128, 96), (80, 48)])  # 80: K padded to whole blocks
@pytest.mark.parametrize("m", [1, 3])
def test_single_layer_lowering_equals_its_qdq_graph(grouping, group, kernels, op, shape, m):
    k, n = shape
    if op == "MatMulInt4PerOC" and k % 64:
        op = "MatMulNBits"  # K = 80 has no group of 64: our per-OC op is not used
    x = np.random.default_rng(0).standard_normal((m, k)).astype(np.float32)
    lowered = linear_layer_model(k, n, grouping, group)
    LowerToMatMulNBitsPass(0, kernels[0], kernels[1])(lowered)
    lowered_ops = [node.op_type for node in lowered.graph]
    assert "DequantizeLinear" not in lowered_ops
    if op is None:  # split: Mul + MatMulNBits per column group, one Concat
        assert lowered_ops.count("MatMulNBits") == n // group and lowered_ops[-1] == "Concat"
    else:
        assert lowered_ops == [op]
    want = x @ quantized_layer_weight(k, n, grouping, group).dequantize()  # the QDQ graph's meaning
    np.testing.assert_allclose(_run(lowered, x), want, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def tiny_qdq(tiny_export):
    """The tiny Llama with RTN INT4 weights, one model per grouping."""
    src = tiny_export("llama")
    made = {}
    for mode in (GroupingMode.PER_OC, GroupingMode.PER_IC):
        model = ir.load(src / "model.onnx")
        config = WeightQuantConfig(mode, 64 if mode is GroupingMode.PER_OC else 32, Algorithm.RTN)
        WeightQuantPass(load_manifest(src).dims, lambda _: None, config)(model)
        made[mode] = model
    return src, made


TINY_CASES = [  # (MatMulNBits, MatMulInt4PerIC, MatMulInt4PerOC) nodes
    (GroupingMode.PER_OC, PerIcKernel.ORTOPS, PerOcKernel.MATMULNBITS, (14, 0, 0)),
    (GroupingMode.PER_OC, PerIcKernel.ORTOPS, PerOcKernel.ORTOPS, None),
    (GroupingMode.PER_IC, PerIcKernel.ORTOPS, PerOcKernel.ORTOPS, (0, 14, 0)),
    (
        GroupingMode.PER_IC,
        PerIcKernel.SPLIT,
        PerOcKernel.ORTOPS,
        (2 * (64 + 32 + 32 + 64 + 96 + 96 + 64) // 32, 0, 0),
    ),
]


@pytest.mark.parametrize(("mode", "per_ic", "per_oc", "counts"), TINY_CASES)
def test_tiny_model_lowering_is_exact_at_level_0(tiny_qdq, tmp_path, mode, per_ic, per_oc, counts):
    src, models = tiny_qdq
    qdq_dir = save_copy(models[mode], src, tmp_path / "qdq")
    lowered = ir.load(qdq_dir / "model.onnx")
    lowering = LowerToMatMulNBitsPass(0, per_ic, per_oc)
    details = lowering(lowered).details
    assert len(details["lowered"]) == 2 * 7 and not details["skipped"]
    assert {layer.grouping.value for layer in details["lowered"]} == {mode.value}
    again = lowering(lowered)  # the same instance again: nothing left, nothing remembered
    assert not again.modified and again.details == {"lowered": [], "skipped": {}}
    ops = [n.op_type for n in lowered.graph]
    assert "DequantizeLinear" not in ops
    got_counts = tuple(ops.count(op) for op in KERNEL_OPS)
    if counts is None:  # our per-OC op where K's group is a multiple of 64, MatMulNBits elsewhere
        ours = [layer for layer in details["lowered"] if layer.group % 64 == 0]
        assert 0 < len(ours) < 14 and got_counts == (14 - len(ours), 0, len(ours))
    else:
        assert got_counts == counts
    used = {v.name for n in lowered.graph for v in n.inputs if v is not None}
    assert set(lowered.graph.initializers) <= used  # the INT4 QDQ constants are gone
    ref, _ = OrtDecoder(qdq_dir).forward(IDS)
    got, _ = OrtDecoder(save_copy(lowered, src, tmp_path / "low")).forward(IDS)
    assert np.abs(got - ref).max() < 1e-4 * np.abs(ref).max()


def test_non_pattern_dequantize_is_reported_and_kept(tiny_qdq):
    _, models = tiny_qdq
    model = ir.serde.deserialize_model(ir.serde.serialize_model(models[GroupingMode.PER_OC]))
    dq = next(n for n in model.graph if n.op_type == "DequantizeLinear")
    dq.attributes["block_size"] = ir.AttrInt64("block_size", 5)  # not a blocking of the scale
    details = LowerToMatMulNBitsPass(4)(model).details
    assert len(details["lowered"]) == 13 and len(details["skipped"]) == 1
    assert "block_size 5" in next(iter(details["skipped"].values()))
    assert sum(n.op_type == "DequantizeLinear" for n in model.graph) == 1


def test_norm_div_rewrite_keeps_logits(tiny_export, tmp_path):
    src = tiny_export("llama")
    model = ir.load(src / "model.onnx")
    rewrite = NormDivPass()
    assert rewrite(model).details["rewritten"] == 2 * 2 + 1  # two norms per layer + final norm
    assert not rewrite(model).modified  # idempotent: no Reciprocal left
    assert not any(n.op_type == "Reciprocal" for n in model.graph)
    ref, _ = OrtDecoder(src).forward(IDS)
    got, _ = OrtDecoder(save_copy(model, src, tmp_path / "div")).forward(IDS)
    assert np.abs(got - ref).max() < 1e-4 * np.abs(ref).max()


def _int4_chain(path, layers: int, k: int, group: int) -> None:
    """``layers`` chained ``MatMul(h, DequantizeLinear(q, s))`` of ``k x k`` INT4 weights,
    saved with external data (as a compiled model is)."""
    rng = np.random.default_rng(0)
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([1, k]))
    nodes, initializers, h = [], [], x
    for i in range(layers):
        q = ir.Value(
            name=f"q{i}",
            const_value=ir.tensor(rng.integers(-8, 8, (k, k)).astype(ml_dtypes.int4), name=f"q{i}"),
        )
        s = ir.Value(
            name=f"s{i}",
            const_value=ir.tensor(rng.random((k // group, k), np.float32), name=f"s{i}"),
        )
        dq = ir.node(
            "DequantizeLinear", [q, s], attributes={"axis": 0, "block_size": group}, name=f"dq{i}"
        )
        mm = ir.node("MatMul", [h, dq.outputs[0]], name=f"mm{i}")
        dq.outputs[0].name, mm.outputs[0].name = f"w{i}", f"h{i}"
        nodes += [dq, mm]
        initializers += [q, s]
        h = mm.outputs[0]
    h.type, h.shape = ir.TensorType(ir.DataType.FLOAT), ir.Shape([1, k])
    graph = ir.Graph([x], [h], nodes=nodes, initializers=initializers, opset_imports={"": 21})
    ir.save(ir.Model(graph, ir_version=10), path, external_data=f"{path.name}.data")


def test_lowering_holds_one_source_weight_at_a_time(tmp_path):
    """A model's INT4 weights are read lazily from disk: the lowering holds its packed output
    and one layer's reads, never every layer's unpacked weights (one byte per value, twice:
    what lowering an 8B model used to hold until it was OOM-killed)."""
    k, layers = 1024, 16
    _int4_chain(tmp_path / "m.onnx", layers, k, 128)
    model = ir.load(str(tmp_path / "m.onnx"))
    tracemalloc.start()
    try:
        LowerToMatMulNBitsPass()(model)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    written = sum(v.const_value.nbytes for v in model.graph.initializers.values())
    assert written >= layers * k * k // 2  # the packed weights, all held: they are the output
    assert peak - written < 8 * k * k  # ≈ 5.6 layers' values in flight; all 16 twice: 29
