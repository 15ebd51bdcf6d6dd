"""The exporter's attention → one GroupedAttention node per layer: same logits in prefill and in
decode steps with the KV cache, the repeated/transposed cache gone, refusals named."""

import numpy as np
import onnx_ir as ir
import pytest

from smoothrot.compiler.measure.probes import teacher_forced_logits
from smoothrot.compiler.runtime.ort_runner import OrtDecoder
from smoothrot.ortops.spec import OP_TYPE_ATTENTION
from smoothrot.passes.lower_attention import LowerAttentionPass
from tests.helpers import save_copy
from tests.passes.test_lower_ort import IDS


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])  # mistral: sliding window
def test_attention_becomes_one_node_per_layer_with_the_same_logits(tiny_export, tmp_path, arch):
    src = tiny_export(arch)
    model = ir.load(src / "model.onnx")
    before = [n.op_type for n in model.graph]
    lowering = LowerAttentionPass()
    result = lowering(model)
    ops = [n.op_type for n in model.graph]
    assert result.modified and result.details == {"lowered": 2, "skipped": {}}
    assert ops.count(OP_TYPE_ATTENTION) == 2
    assert not {"Softmax", "IsNaN"} & set(ops)
    assert ops.count("Expand") == before.count("Expand") - 2 * 2  # the K and V head repeats
    assert len(ops) < len(before) - 2 * 15  # some 20 nodes per layer become one
    ref = teacher_forced_logits(OrtDecoder(src), IDS, decode_steps=8)
    got = teacher_forced_logits(OrtDecoder(save_copy(model, src, tmp_path / "low")), IDS, 8)
    assert np.abs(got - ref).max() < 1e-4 * np.abs(ref).max()
    again = lowering(model)  # the same instance: no Softmax left, nothing remembered
    assert not again.modified and again.details == {"lowered": 0, "skipped": {}}


def test_attention_that_is_not_the_pattern_is_named_and_kept(tiny_export):
    model = ir.load(tiny_export("llama") / "model.onnx")
    transpose = next(
        n
        for n in model.graph
        if n.op_type == "Transpose" and n.attributes["perm"].as_ints() == (0, 2, 1)
    )
    transpose.attributes["perm"] = ir.AttrInt64s("perm", [1, 0, 2])  # not a K transpose
    details = LowerAttentionPass()(model).details
    assert details["lowered"] == 1 and len(details["skipped"]) == 1
    (why,) = details["skipped"].values()
    assert why == "K is not transposed by perm [0, 2, 1]"
    assert sum(n.op_type == "Softmax" for n in model.graph) == 1
