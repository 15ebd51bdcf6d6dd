"""Online rotations → one KroneckerRotation node each: same logits, fewer nodes, refusals named."""

import numpy as np
import onnx_ir as ir
import pytest

from smoothrot.compiler.runtime.ort_runner import OrtDecoder
from smoothrot.core.manifest import load_manifest
from smoothrot.ortops.spec import OP_TYPE_ROTATION
from smoothrot.passes._graph import ROTATION_MARK, constant_array, set_constant
from smoothrot.passes.lower_rotation import LowerRotationPass
from smoothrot.passes.online_rotation import OnlineRotationPass
from tests.helpers import save_copy
from tests.passes.test_lower_ort import IDS


@pytest.fixture(scope="module")
def rotated(tiny_export, tmp_path_factory):
    """The tiny Llama with online rotations at every site, saved (the reference)."""
    src = tiny_export("llama")
    model = ir.load(src / "model.onnx")
    OnlineRotationPass(load_manifest(src).dims)(model)
    return src, save_copy(model, src, tmp_path_factory.mktemp("rot") / "model")


def _marked(model: ir.Model) -> list[str]:
    return [n.op_type for n in model.graph if n.metadata_props.get(ROTATION_MARK) == "online"]


def test_rotations_become_one_node_each_with_the_same_logits(rotated, tmp_path):
    src, rot_dir = rotated
    model = ir.load(rot_dir / "model.onnx")
    sites = _marked(model).count("Reshape") // 2
    assert sites >= 2 * 4  # q/k/v, o_proj, gate/up and down_proj inputs in each of 2 layers
    lowering = LowerRotationPass()
    result = lowering(model)
    assert result.details == {"lowered": sites, "skipped": {}} and result.modified
    assert _marked(model) == [OP_TYPE_ROTATION] * sites  # the marks move to the new node
    used = {v.name for n in model.graph for v in n.inputs if v is not None}
    assert set(model.graph.initializers) <= used  # the four-node form's constants are gone
    again = lowering(model)  # the same instance: it kept nothing from the first call
    assert not again.modified and again.details == {"lowered": 0, "skipped": {}}
    ref, _ = OrtDecoder(rot_dir).forward(IDS)
    got, _ = OrtDecoder(save_copy(model, src, tmp_path / "low")).forward(IDS)
    assert np.abs(got - ref).max() < 1e-4 * np.abs(ref).max()


def test_a_rotation_that_is_not_our_pattern_is_named_and_kept(rotated):
    _, rot_dir = rotated
    model = ir.load(rot_dir / "model.onnx")
    sites = _marked(model).count("Reshape") // 2
    mm_b = next(
        n for n in model.graph if n.op_type == "MatMul" and n.metadata_props.get(ROTATION_MARK)
    )
    b = mm_b.inputs[1]
    set_constant(b, constant_array(b)[::-1].copy())  # an orthogonal B, but not Sylvester's
    start = mm_b.inputs[0].producer()
    details = LowerRotationPass()(model).details
    assert details["lowered"] == sites - 1
    assert details["skipped"] == {start.name: "B is not a normalized Sylvester Hadamard matrix"}
    assert start in list(model.graph)
