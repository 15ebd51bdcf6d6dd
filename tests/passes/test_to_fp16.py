"""Fp16Pass: fp16 compute with fp32 norm statistics, rotary angles and logits."""

import numpy as np
import onnx_ir as ir
import pytest

from smoothrot.compiler.runtime.ort_runner import OrtDecoder
from smoothrot.core.manifest import load_manifest
from smoothrot.core.pass_infra import PassPreconditionError
from smoothrot.passes.model_map import ModelMapError
from smoothrot.passes.to_fp16 import FP16_MAX, Fp16Pass
from tests.helpers import save_copy

IDS = np.array([[1, 504, 3287, 8925, 9, 253, 30, 2478, 253, 1329, 28, 3114]], np.int64)


def test_fp16_keeps_norm_statistics_and_rotary_in_fp32(tiny_export, tmp_path):
    src = tiny_export("llama")
    model = ir.load(src / "model.onnx")
    half = Fp16Pass(load_manifest(src).dims)
    details = half(model).details
    graph = model.graph
    assert details["island_nodes"] >= 5 * (2 * 2 + 1) + 3  # 5 nodes per norm + the rotary path
    assert details["saturated"] >= 1  # the attention mask's finfo(float32).min
    with pytest.raises(PassPreconditionError, match="to_fp16 needs a float32 graph"):
        half(model)  # its own output is fp16: refused, not converted twice
    for pow_ in (n for n in graph if n.op_type == "Pow"):
        cast = pow_.inputs[0].producer()
        assert cast.op_type == "Cast" and cast.attributes.get_int("to") == 1
    for node in (n for n in graph if n.op_type in ("Cos", "Sin")):
        assert node.inputs[0].dtype == ir.DataType.FLOAT
        (use,) = node.outputs[0].uses()
        assert use.node.op_type == "Cast" and use.node.attributes.get_int("to") == 10
    dtypes = {v.name: v.dtype for v in (*graph.inputs, *graph.outputs)}
    assert dtypes["past.0.key"] == dtypes["present.1.value"] == ir.DataType.FLOAT16
    assert dtypes["logits"] == ir.DataType.FLOAT
    floats = [v for v in graph.initializers.values() if v.dtype == ir.DataType.FLOAT]
    assert sorted(v.const_value.size for v in floats) == [1, 1, 8]  # 2, ε and inv_freq
    big = [v for v in graph.initializers.values() if v.dtype == ir.DataType.FLOAT16]
    assert max(np.abs(v.const_value.numpy()).max() for v in big) <= FP16_MAX
    ref, _ = OrtDecoder(src).forward(IDS)
    got, _ = OrtDecoder(save_copy(model, src, tmp_path / "fp16", "fp16")).forward(IDS)
    cos = (ref * got).sum(-1) / np.linalg.norm(ref, axis=-1) / np.linalg.norm(got, axis=-1)
    assert cos.min() > 0.9999 and (ref.argmax(-1) == got.argmax(-1)).all()


def test_fp16_refuses_a_graph_it_does_not_recognize(tiny_export):
    src = tiny_export("llama")
    model = ir.load(src / "model.onnx")
    dims = load_manifest(src).dims
    with pytest.raises(ModelMapError, match="found 5 RMSNorms, expected at least 7"):
        Fp16Pass(type(dims)(**{**dims.__dict__, "layers": 3}))(model)
