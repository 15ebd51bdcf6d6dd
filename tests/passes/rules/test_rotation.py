"""The online-rotation pattern and its two lowerings: op types and names left, the matched factors
against numpy (and ONNX Runtime before/after where the replacement is standard ONNX), each
lowering's own check, the shared refusals named, idempotence."""

import numpy as np
import onnx_ir as ir
import pytest

from smoothrot.core.hadamard import rotation_factors
from smoothrot.ortops.spec import DOMAIN as ORTOPS_DOMAIN
from smoothrot.ortops.spec import OP_TYPE_ROTATION, reference_rotation
from smoothrot.passes._graph import ROTATION_MARK, constant_array
from smoothrot.passes.lower_rotation import LowerRotationPass
from smoothrot.passes.rules.rotation import (
    KroneckerRotation,
    KronHadamard,
    OnlineRotation,
    is_rotation_start,
    lower_rotation,
)
from smoothrot.plugins.trt_spec import NAMESPACE, plugin_reference
from tests.passes.rules._models import copy, floats, node, op_types, parse, run

N = 24  # A = H_12 / √12 (Paley), B = H_2 / √2
X = np.random.default_rng(2).standard_normal((1, 3, N)).astype(np.float32) * 3
FACTORS = "24x2:hadamard"


def _rotation(n: int = N, outputs: str = "") -> ir.Model:
    """``y = x · (A ⊗ B)`` as OnlineRotationPass writes it, named ``rot.*`` and marked."""
    f = rotation_factors(n)
    m, p = f.a.shape[0], f.b.shape[0]
    model = parse(f"""
    <ir_version: 10, opset_import: ["" : 21]>
    rotate (float[1, 3, {n}] x) => (float[1, 3, {n}] y{outputs})
        <int64[4] split = {{0, 0, {m}, {p}}}, int64[3] merge = {{0, 0, {n}}},
         float[{p}, {p}] b = {{{floats(f.b)}}}, float[{m}, {m}] at = {{{floats(f.a.T)}}}> {{
      [rot_reshape_in] blocks = Reshape(x, split)
      [rot_matmul_b] xb = MatMul(blocks, b)
      [rot_matmul_a] axb = MatMul(at, xb)
      [rot_reshape_out] y = Reshape(axb, merge)
    }}
    """)
    for n_ in model.graph:
        n_.name = n_.name.replace("_", ".", 1)
        n_.metadata_props[ROTATION_MARK] = "online"
        n_.metadata_props[f"{ROTATION_MARK}.factors"] = FACTORS
    return model


def _first(model: ir.Model) -> ir.Node:
    return node(model, "rot.reshape_in")


class _Dense(OnlineRotation):
    """A lowering to one standard MatMul by ``A ⊗ B`` (so ONNX Runtime can run both forms)."""

    def rewrite(self, op, x, b, at, **_):
        r = np.kron(constant_array(at).T, constant_array(b)).astype(np.float32)
        return op.MatMul(x, op.initializer(ir.tensor(r, name="rot.dense")), _name="rot")


def test_the_shared_pattern_matches_the_four_nodes_and_keeps_the_values():
    model = _rotation()
    before = copy(model)
    outcome = lower_rotation(_Dense().rule(), model, _first(model))
    assert outcome and [n.op_type for n in outcome.match.nodes].count("MatMul") == 2
    assert op_types(model) == ["MatMul"] and set(model.graph.initializers) == {"rot.dense"}
    got, want = run(model, {"x": X})[0], run(before, {"x": X})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_ort_lowering_is_one_kronecker_rotation_node():
    model = _rotation()
    at = constant_array(model.graph.initializers["at"])
    want = run(copy(model), {"x": X})[0]
    lowering = LowerRotationPass()
    result = lowering(model)
    assert result.modified and result.details == {"lowered": 1, "skipped": {}}
    [rot] = list(model.graph)
    assert (rot.op_type, rot.domain, rot.name) == (OP_TYPE_ROTATION, ORTOPS_DOMAIN, "rot")
    assert rot.metadata_props[ROTATION_MARK] == "online"  # the marks move to the new node
    assert rot.metadata_props[f"{ROTATION_MARK}.factors"] == FACTORS
    assert set(model.graph.initializers) == {"rot.a"}
    a = constant_array(rot.inputs[1])
    np.testing.assert_array_equal(a, at.T)  # A, not Aᵀ
    np.testing.assert_allclose(reference_rotation(X, a), want, rtol=1e-5, atol=1e-5)
    assert model.opset_imports[ORTOPS_DOMAIN] == 1
    again = lowering(model)
    assert not again.modified and again.details == {"lowered": 0, "skipped": {}}


def test_trt_lowering_is_one_kron_hadamard_node():
    model = _rotation()
    at, b = (constant_array(model.graph.initializers[k]) for k in ("at", "b"))
    model.graph.initializers["b"].name = "rot.b"  # taken: the plugin's B becomes rot.b.1
    want = run(copy(model), {"x": X})[0]
    outcome = lower_rotation(KronHadamard().rule(), model, _first(model))
    assert outcome
    [rot] = list(model.graph)
    assert outcome.nodes == (rot,)
    assert (rot.op_type, rot.domain, rot.name) == ("kron_hadamard", NAMESPACE, "rot")
    attrs = {k: a.value for k, a in rot.attributes.items()}
    assert attrs == {"plugin_namespace": NAMESPACE, "aot": 1, "m": 12, "p": 2}
    assert dict(rot.metadata_props) == {ROTATION_MARK: "online"}
    assert [v.name for v in rot.inputs[1:]] == ["rot.a", "rot.b.1"]
    assert set(model.graph.initializers) == {"rot.a", "rot.b.1"}
    np.testing.assert_array_equal(constant_array(rot.inputs[1]), at.T)
    np.testing.assert_array_equal(constant_array(rot.inputs[2]), b)
    np.testing.assert_allclose(plugin_reference(rot, X), want, rtol=1e-5, atol=1e-5)


def _reverse_b(model):
    b = model.graph.initializers["b"]
    b.const_value = ir.tensor(constant_array(b)[::-1].copy(), name="b")  # orthogonal, not H_p


def _second_reader(model):
    model.graph.outputs.append(node(model, "rot.matmul_b").outputs[0])


def _unmarked(model):
    del node(model, "rot.matmul_b").metadata_props[ROTATION_MARK]


def _flat_merge(model):
    merge = model.graph.initializers["merge"]
    merge.const_value = ir.tensor(np.array([0, 0, -1], np.int64), name="merge")


def _half_input(model):
    model.graph.inputs[0].type = ir.TensorType(ir.DataType.FLOAT16)


SHAPES = "reshapes are not [0, 0, m, p] / [0, 0, m·p] around square factors"
CASES = [  # (change, ORT's reason, TensorRT's reason; None: that lowering takes it)
    (_reverse_b, "B is not a normalized Sylvester Hadamard matrix", None),
    (_half_input, "input is not float32", None),
    (_second_reader, *["expected only a MatMul to read the output of 'rot.matmul_b'"] * 2),
    (_unmarked, *["not every node carries the online-rotation mark"] * 2),
    (_flat_merge, SHAPES, SHAPES),
]


@pytest.mark.parametrize(("change", "ort", "trt"), CASES, ids=lambda c: getattr(c, "__name__", ""))
def test_each_lowering_names_what_it_refuses_and_leaves_the_graph(change, ort, trt):
    for rule, reason in ((KroneckerRotation().rule(), ort), (KronHadamard().rule(), trt)):
        model = _rotation()
        change(model)
        before = op_types(model)
        outcome = lower_rotation(rule, model, _first(model))
        assert bool(outcome) is (reason is None)
        if reason is not None:
            assert outcome.reason == reason and op_types(model) == before
    model = _rotation()
    change(model)
    details = LowerRotationPass()(model).details
    assert details == {"lowered": 0, "skipped": {"rot.reshape_in": ort}}


def test_trt_lowering_refuses_factors_its_kernel_cannot_hold():
    model = _rotation(n=1024)  # factors made 2 x 512 below
    split, b = model.graph.initializers["split"], model.graph.initializers["b"]
    at = model.graph.initializers["at"]
    at.const_value = ir.tensor(np.eye(2, dtype=np.float32), name="at")
    b.const_value = ir.tensor(np.eye(512, dtype=np.float32), name="b")
    split.const_value = ir.tensor(np.array([0, 0, 2, 512], np.int64), name="split")
    outcome = lower_rotation(KronHadamard().rule(), model, _first(model))
    assert not outcome and outcome.reason == "factor size p=512 must lie in [1, 256]"


def test_a_rotation_starts_at_its_first_marked_reshape_only():
    model = _rotation()
    assert is_rotation_start(_first(model))
    assert not is_rotation_start(node(model, "rot.reshape_out"))
    del _first(model).metadata_props[ROTATION_MARK]
    assert not is_rotation_start(_first(model))
