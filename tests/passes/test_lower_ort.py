"""ORT lowering: MatMulNBits packing, per-OC / per-IC rewrites exact at level 0, norms as Div."""

import shutil

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest

from smoothrot.compiler.export import save_model
from smoothrot.compiler.manifest import load_manifest
from smoothrot.compiler.runner import OrtDecoder
from smoothrot.ortops.library import register as register_ortops
from smoothrot.passes.int4 import Grouping, fit_group_size, quantize_rtn
from smoothrot.passes.lower_ort import (
    LowerToMatMulNBitsPass,
    PerIcKernel,
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
from smoothrot.tools.bench_layer import layer_model

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


KERNELS = [
    (Grouping.PER_OC, PerIcKernel.ORTOPS),
    (Grouping.PER_IC, PerIcKernel.ORTOPS),
    (Grouping.PER_IC, PerIcKernel.SPLIT),
]


@pytest.mark.parametrize(("grouping", "per_ic"), KERNELS)
@pytest.mark.parametrize("shape", [(64, 96), (80, 48)])  # 80: K padded to whole blocks
def test_single_layer_lowering_equals_its_qdq_graph(grouping, per_ic, shape):
    k, n = shape
    x = np.random.default_rng(0).standard_normal((3, k)).astype(np.float32)
    lowered = layer_model(k, n, grouping, 16, level=0, per_ic=per_ic)  # QDQ, then lowered
    lowered_ops = [node.op_type for node in lowered.graph]
    assert "DequantizeLinear" not in lowered_ops
    split = grouping is Grouping.PER_IC and per_ic is PerIcKernel.SPLIT
    if grouping is Grouping.PER_IC and per_ic is PerIcKernel.ORTOPS:
        assert lowered_ops == ["MatMulInt4PerIC"]
    else:
        assert lowered_ops.count("MatMulNBits") == (n // 16 if split else 1)
    assert ("Concat" in lowered_ops) == split
    rng = np.random.default_rng(0)
    b = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    qw = quantize_rtn(b, grouping, fit_group_size((k, n)[grouping.axis], 16))
    want = x @ qw.dequantize()  # the QDQ graph's meaning
    np.testing.assert_allclose(_run(lowered, x), want, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def tiny_qdq(tiny_export):
    """The tiny Llama with RTN INT4 weights, one model per grouping."""
    src = tiny_export("llama")
    made = {}
    for mode in (GroupingMode.PER_OC, GroupingMode.PER_IC):
        model = ir.load(src / "model.onnx")
        config = WeightQuantConfig(mode, 32, Algorithm.RTN)
        WeightQuantPass(load_manifest(src).dims, lambda _: None, config)(model)
        made[mode] = model
    return src, made


def _save(model: ir.Model, src, dst):
    shutil.copytree(src, dst)
    for f in ("model.onnx", "model.onnx.data"):
        (dst / f).unlink()
    save_model(model, dst)
    return dst


@pytest.mark.parametrize(
    ("mode", "per_ic"),
    [
        (GroupingMode.PER_OC, PerIcKernel.ORTOPS),
        (GroupingMode.PER_IC, PerIcKernel.ORTOPS),
        (GroupingMode.PER_IC, PerIcKernel.SPLIT),
    ],
)
def test_tiny_model_lowering_is_exact_at_level_0(tiny_qdq, tmp_path, mode, per_ic):
    src, models = tiny_qdq
    qdq_dir = _save(models[mode], src, tmp_path / "qdq")
    lowered = ir.load(qdq_dir / "model.onnx")
    lowering = LowerToMatMulNBitsPass(0, per_ic)
    lowering(lowered)
    assert len(lowering.lowered) == 2 * 7 and not lowering.skipped
    assert {layer.grouping for layer in lowering.lowered} == {mode.value}
    ops = [n.op_type for n in lowered.graph]
    assert "DequantizeLinear" not in ops
    kernels = {  # (MatMulNBits, MatMulInt4PerIC) nodes
        (GroupingMode.PER_OC, PerIcKernel.ORTOPS): (14, 0),
        (GroupingMode.PER_IC, PerIcKernel.ORTOPS): (0, 14),
        (GroupingMode.PER_IC, PerIcKernel.SPLIT): (
            2 * (64 + 32 + 32 + 64 + 96 + 96 + 64) // 32,
            0,
        ),
    }
    assert (ops.count("MatMulNBits"), ops.count("MatMulInt4PerIC")) == kernels[(mode, per_ic)]
    used = {v.name for n in lowered.graph for v in n.inputs if v is not None}
    assert set(lowered.graph.initializers) <= used  # the INT4 QDQ constants are gone
    ref, _ = OrtDecoder(qdq_dir).forward(IDS)
    got, _ = OrtDecoder(_save(lowered, src, tmp_path / "low")).forward(IDS)
    assert np.abs(got - ref).max() < 1e-4 * np.abs(ref).max()


def test_non_pattern_dequantize_is_reported_and_kept(tiny_qdq):
    _, models = tiny_qdq
    model = ir.serde.deserialize_model(ir.serde.serialize_model(models[GroupingMode.PER_OC]))
    dq = next(n for n in model.graph if n.op_type == "DequantizeLinear")
    dq.attributes["block_size"] = ir.AttrInt64("block_size", 5)  # not a blocking of the scale
    lowering = LowerToMatMulNBitsPass(4)
    lowering(model)
    assert len(lowering.lowered) == 13 and len(lowering.skipped) == 1
    assert "block_size 5" in next(iter(lowering.skipped.values()))
    assert sum(n.op_type == "DequantizeLinear" for n in model.graph) == 1


def test_norm_div_rewrite_keeps_logits(tiny_export, tmp_path):
    src = tiny_export("llama")
    model = ir.load(src / "model.onnx")
    rewrite = NormDivPass()
    rewrite(model)
    assert rewrite.rewritten == 2 * 2 + 1  # two norms per layer + the final norm
    assert not any(n.op_type == "Reciprocal" for n in model.graph)
    ref, _ = OrtDecoder(src).forward(IDS)
    got, _ = OrtDecoder(_save(model, src, tmp_path / "div")).forward(IDS)
    assert np.abs(got - ref).max() < 1e-4 * np.abs(ref).max()
