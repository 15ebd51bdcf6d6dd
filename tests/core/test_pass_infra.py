"""core/pass_infra.py: a Pipeline is an onnx_ir PassManager that names, times and returns its
steps, and lets a pass's own error (a one-line ValueError for a user mistake) through as it is."""

from __future__ import annotations

import onnx_ir as ir
import pytest

from smoothrot.core.errors import SmoothrotError
from smoothrot.core.pass_infra import PassPreconditionError, PassReport, Pipeline


def _model() -> ir.Model:
    return ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 21]>
        g (float[2] x) => (float[2] y) {
            t = Identity(x)
            y = Identity(t)
        }
        """
    )


class _DropIdentity(ir.passes.InPlacePass):
    name = "drop_identity"

    def call(self, model: ir.Model) -> PassReport:
        first = next((n for n in model.graph if n.op_type == "Identity"), None)
        if first is None or first.outputs[0].is_graph_output():
            return PassReport(model, False, {"dropped": 0})
        first.outputs[0].replace_all_uses_with(first.inputs[0])
        model.graph.remove(first, safe=True)
        return PassReport(model, True, {"dropped": 1})


class _NeedsTwoNodes(ir.passes.InPlacePass):
    name = "needs_two_nodes"

    def requires(self, model: ir.Model) -> None:
        if len(model.graph) != 2:
            raise PassPreconditionError(f"{self.name} needs two nodes, got {len(model.graph)}")

    def call(self, model: ir.Model) -> PassReport:
        return PassReport(model, False)


class _Refuses(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> PassReport:
        raise SmoothrotError("the user's group size fits no layer")


def test_steps_are_named_timed_and_returned_in_order():
    seen = []
    pipeline = Pipeline([_DropIdentity(), _DropIdentity()], after_step=lambda n, m: seen.append(n))
    assert isinstance(pipeline, ir.passes.PassManager)
    result = pipeline(_model())
    assert [s.name for s in result.steps] == ["drop_identity", "drop_identity"] == seen
    assert [s.modified for s in result.steps] == [True, False] and result.modified
    assert result.details("drop_identity") == {"dropped": 0}  # the last step of that name
    assert result.steps[0].stage_row()["stage"] == "drop_identity"
    assert all(s.seconds >= 0 for s in result.steps)
    assert result.details("absent") == {}


def test_a_precondition_error_names_the_pass_and_is_a_value_error():
    pipeline = Pipeline([_DropIdentity(), _NeedsTwoNodes()])
    with pytest.raises(PassPreconditionError, match="needs_two_nodes needs two nodes, got 1"):
        pipeline(_model())
    assert issubclass(PassPreconditionError, ValueError)
    assert issubclass(PassPreconditionError, ir.passes.PreconditionError)


def test_a_pass_error_is_not_wrapped():
    with pytest.raises(SmoothrotError, match="fits no layer"):
        Pipeline([_DropIdentity(), _Refuses()])(_model())
