"""Lower each online Hadamard rotation to one ``smoothrot.ort::KroneckerRotation`` node.

``OnlineRotationPass`` writes ``y = x · (A ⊗ B)`` as four standard nodes (see
``online_rotation.py``)::

    Reshape(x, [0, 0, m, p]) → MatMul(·, B) → MatMul(Aᵀ, ·) → Reshape(·, [0, 0, n])

which ONNX Runtime runs as four dispatches with three intermediate tensors: about 60–95 µs per
site on this project's 2-core machine, against a few µs of arithmetic. Our op computes the same
values in one node, with a fast Walsh–Hadamard transform for ``B``. The chain is matched
exactly — every node marked ``smoothrot.rotation = online``, float32, each intermediate read
only by the next node, ``B`` the normalized Sylvester matrix ``H_p/√p`` — and anything else
marked as a rotation is reported by name in ``skipped`` and left as it is.
"""

from __future__ import annotations

import enum

import numpy as np
import onnx_ir as ir

from smoothrot.core.hadamard import hadamard
from smoothrot.core.pass_infra import PassReport
from smoothrot.ortops.spec import DOMAIN as ORTOPS_DOMAIN
from smoothrot.ortops.spec import OP_TYPE_ROTATION
from smoothrot.passes._graph import ROTATION_MARK, constant_array, is_constant, new_initializer

__all__ = ["LowerRotationPass", "RotationKernel"]


class RotationKernel(enum.StrEnum):
    ORTOPS = "ortops"  # one smoothrot.ort::KroneckerRotation node per site (our custom op)
    MATMUL = "matmul"  # left as Reshape → MatMul → MatMul → Reshape (standard ONNX ops)


def _only_reader(value: ir.Value, op_type: str) -> ir.Node | None:
    uses = list(value.uses())
    if len(uses) != 1 or value.is_graph_output():
        return None
    node = uses[0].node
    marked = node.metadata_props.get(ROTATION_MARK) == "online"
    return node if node.op_type == op_type and node.domain == "" and marked else None


def _match(reshape_in: ir.Node) -> tuple[list[ir.Node], np.ndarray] | str:
    """The four nodes and ``A`` (not ``Aᵀ``) of the rotation starting at ``reshape_in``, or
    why it is not our pattern."""
    x = reshape_in.inputs[0]
    if x is None or x.dtype != ir.DataType.FLOAT:
        return "input is not float32"
    mm_b = _only_reader(reshape_in.outputs[0], "MatMul")
    if (
        mm_b is None
        or mm_b.inputs[0] is not reshape_in.outputs[0]
        or not is_constant(mm_b.inputs[1])
    ):
        return "Reshape is not followed by MatMul(·, constant B)"
    mm_a = _only_reader(mm_b.outputs[0], "MatMul")
    if mm_a is None or mm_a.inputs[1] is not mm_b.outputs[0] or not is_constant(mm_a.inputs[0]):
        return "MatMul(·, B) is not followed by MatMul(constant Aᵀ, ·)"
    reshape_out = _only_reader(mm_a.outputs[0], "Reshape")
    if reshape_out is None:
        return "MatMul(Aᵀ, ·) is not followed by Reshape"
    b = constant_array(mm_b.inputs[1]).astype(np.float64)  # type: ignore[arg-type]
    at = constant_array(mm_a.inputs[0]).astype(np.float64)  # type: ignore[arg-type]
    p = b.shape[0] if b.ndim == 2 else 0
    h = hadamard(p) if p and p & (p - 1) == 0 else None
    if h is None or b.shape != (p, p) or not np.allclose(b, h / np.sqrt(p), rtol=0, atol=1e-7):
        return "B is not a normalized Sylvester Hadamard matrix"
    if at.ndim != 2 or at.shape[0] != at.shape[1]:
        return "Aᵀ is not square"
    return [reshape_in, mm_b, mm_a, reshape_out], np.ascontiguousarray(at.T, np.float32)


class LowerRotationPass(ir.passes.InPlacePass):
    """``details``: ``lowered`` (count), ``skipped`` (first node's name → why it stays)."""

    name = "lower_rotation"

    def call(self, model: ir.Model) -> PassReport:
        graph = model.graph
        lowered, skipped = 0, {}
        for start in [n for n in graph if _starts_rotation(n)]:
            found = _match(start)
            if isinstance(found, str):
                skipped[start.name or "?"] = found
                continue
            nodes, a = found
            constants = [nodes[0].inputs[1], nodes[1].inputs[1], nodes[2].inputs[0]]
            constants.append(nodes[3].inputs[1])
            tag = (start.name or "rotation").removesuffix(".reshape_in")
            factor = new_initializer(graph, f"{tag}.a", a)
            node = ir.node(
                OP_TYPE_ROTATION, [start.inputs[0], factor], domain=ORTOPS_DOMAIN, name=tag
            )
            for key, value in start.metadata_props.items():  # keeps the rotation's marks
                node.metadata_props[key] = value
            ir.convenience.replace_nodes_and_values(
                graph, nodes[0], nodes, [node], [nodes[-1].outputs[0]], [node.outputs[0]]
            )
            for value in constants:  # the exporter may share constants: drop only dead ones
                if value is not None and not value.uses() and value.name in graph.initializers:
                    graph.initializers.pop(value.name)
            lowered += 1
        if lowered:
            model.opset_imports.setdefault(ORTOPS_DOMAIN, 1)
        return PassReport(model, lowered > 0, {"lowered": lowered, "skipped": skipped})


def _starts_rotation(node: ir.Node) -> bool:
    """A marked Reshape that is not the last node of a rotation (whose input a marked MatMul
    produces)."""
    if node.op_type != "Reshape" or node.metadata_props.get(ROTATION_MARK) != "online":
        return False
    producer = node.inputs[0].producer() if node.inputs[0] is not None else None
    return not (
        producer is not None
        and producer.op_type == "MatMul"
        and producer.metadata_props.get(ROTATION_MARK) == "online"
    )
