"""Small graph helpers shared by the passes (constants, producers, consumers)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

ROTATION_MARK = "smoothrot.rotation"  # node metadata on every node of an online rotation
ACT_QUANT_MARK = "smoothrot.act_quant"  # node metadata on every node of an activation QDQ

__all__ = [
    "ACT_QUANT_MARK",
    "ROTATION_MARK",
    "Int4MatMul",
    "match_int4_matmul",
    "remove_if_dead",
    "unrotated",
    "constant_array",
    "consumers",
    "is_constant",
    "new_initializer",
    "private_constant",
    "transform_constant",
    "producer_op",
    "scalar_constant",
    "set_constant",
]


def is_constant(value: ir.Value | None) -> bool:
    return value is not None and value.const_value is not None


def constant_array(value: ir.Value) -> np.ndarray:
    assert value.const_value is not None, f"{value.name} is not a constant"
    return value.const_value.numpy()


def set_constant(value: ir.Value, array: np.ndarray) -> None:
    """Replace an initializer's data, keeping its name and dtype."""
    old = value.const_value
    assert old is not None, f"{value.name} is not a constant"
    dtype = old.numpy().dtype
    value.const_value = ir.tensor(np.ascontiguousarray(array, dtype=dtype), name=value.name)


def scalar_constant(value: ir.Value | None) -> float | None:
    if not is_constant(value):
        return None
    arr = constant_array(value)  # type: ignore[arg-type]
    return float(arr.reshape(-1)[0]) if arr.size == 1 else None


def producer_op(value: ir.Value | None, op_type: str) -> ir.Node | None:
    """The node producing ``value`` if it is an ``op_type`` node, else None."""
    if value is None:
        return None
    node = value.producer()
    return node if node is not None and node.op_type == op_type else None


def consumers(value: ir.Value) -> list[ir.Node]:
    return list(value.consumers())


def new_initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    """Register ``array`` as an initializer (with its type and shape) and return its value."""
    tensor = ir.tensor(array, name=name)
    value = ir.Value(
        name=name, shape=tensor.shape, type=ir.TensorType(tensor.dtype), const_value=tensor
    )
    graph.register_initializer(value)
    return value


def private_constant(node: ir.Node, index: int) -> ir.Value:
    """Make ``node.inputs[index]`` an initializer that only ``node`` reads, and return it.

    The exporter deduplicates equal initializers, so two norms can share one γ; a pass that
    rewrites a constant for one consumer must not silently rewrite it for the others.
    """
    value = node.inputs[index]
    assert value is not None and value.const_value is not None and value.graph is not None
    if len(value.uses()) == 1:
        return value
    graph = value.graph
    base, n = f"{value.name}.{node.name or node.op_type}", 0
    while f"{base}.{n}" in graph.initializers:
        n += 1
    copy = new_initializer(graph, f"{base}.{n}", constant_array(value).copy())
    node.replace_input_with(index, copy)
    return copy


def unrotated(value: ir.Value) -> ir.Value:
    """The value an online rotation or an activation QDQ was applied to (through any chain of
    them), or ``value`` itself if none was."""
    while (node := value.producer()) is not None and _inserted(node):
        source = (
            node.inputs[0]
            if node.op_type != "MatMul" or is_constant(node.inputs[1])
            else node.inputs[1]
        )
        assert source is not None
        value = source
    return value


def _inserted(node: ir.Node) -> bool:
    props = node.metadata_props
    return bool(props.get(ROTATION_MARK) or props.get(ACT_QUANT_MARK))


def transform_constant(node: ir.Node, value: ir.Value, fn) -> None:
    """Make ``value`` (an input of ``node``) private to it, then set it to ``fn(float64 data)``."""
    own = private_constant(node, list(node.inputs).index(value))
    set_constant(own, fn(constant_array(own).astype(np.float64)))


@dataclass
class Int4MatMul:
    """``MatMul(X, DequantizeLinear(q, scale))`` with a blocked, symmetric INT4 constant weight."""

    matmul: ir.Node
    dq: ir.Node
    q: np.ndarray  # int8 [K, N], values in [-8, 7]
    scale: np.ndarray  # float32, [K/g, N] (axis 0) or [K, N/g] (axis 1)
    axis: int
    group: int


def match_int4_matmul(matmul: ir.Node) -> Int4MatMul | str | None:
    """The INT4 QDQ weight of ``matmul``; a problem string if it is INT4 but not our pattern
    (a zero point, a run-time scale, not 2-D, not blocked on axis 0 or 1); None if not INT4."""
    weight = matmul.inputs[1] if len(matmul.inputs) > 1 else None
    dq = weight.producer() if weight is not None else None
    if dq is None or dq.op_type != "DequantizeLinear" or not is_constant(dq.inputs[0]):
        return None
    q_value = dq.inputs[0]
    if q_value.const_value.dtype != ir.DataType.INT4:  # type: ignore[union-attr]
        return None
    if len(dq.inputs) > 2 and dq.inputs[2] is not None:
        return "has a zero point"
    if not is_constant(dq.inputs[1]) or q_value.const_value.shape.rank() != 2:  # type: ignore[union-attr]
        return "scale is not a constant, or the weight is not 2-D"
    q = constant_array(q_value).astype(np.int8)
    scale = constant_array(dq.inputs[1]).astype(np.float32)
    axis = dq.attributes.get_int("axis", 1)
    axis = axis + 2 if axis < 0 else axis
    group = dq.attributes.get_int("block_size", 0)
    k, n = q.shape
    if axis not in (0, 1) or group <= 0 or q.shape[axis] % group:
        return f"DequantizeLinear axis {axis}, block_size {group} is not a blocked INT4 weight"
    expected = (k // group, n) if axis == 0 else (k, n // group)
    if scale.shape != expected:
        return f"scale {list(scale.shape)} does not block weight {list(q.shape)} on axis {axis}"
    return Int4MatMul(matmul, dq, q, scale, axis, group)


def remove_if_dead(graph: ir.Graph, node: ir.Node) -> bool:
    """Remove ``node`` if nothing reads its outputs, then the initializers only it read."""
    if any(out.uses() or out.is_graph_output() for out in node.outputs):
        return False
    inputs = list(node.inputs)  # removing the node detaches them
    graph.remove(node, safe=True)
    for value in inputs:
        if value is not None and not value.uses() and value.name in graph.initializers:
            graph.initializers.pop(value.name)
    return True
