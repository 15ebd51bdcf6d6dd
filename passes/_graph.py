"""Small graph helpers shared by the passes (constants, producers, consumers)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import numpy as np
import onnx_ir as ir

ROTATION_MARK = "smoothrot.rotation"  # node metadata on every node of an online rotation
ACT_QUANT_MARK = "smoothrot.act_quant"  # node metadata on every node of an activation QDQ

__all__ = [
    "ACT_QUANT_MARK",
    "ROTATION_MARK",
    "constant_array",
    "consumers",
    "drop_dead_initializers",
    "is_constant",
    "new_initializer",
    "private_constant",
    "producer_op",
    "read_constant",
    "remove_if_dead",
    "scalar_constant",
    "set_constant",
    "transform_constant",
    "unrotated",
]


def is_constant(value: ir.Value | None) -> bool:
    return value is not None and value.const_value is not None


def constant_array(value: ir.Value) -> np.ndarray:
    assert value.const_value is not None, f"{value.name} is not a constant"
    return value.const_value.numpy()


def read_constant(value: ir.Value, dtype: np.dtype | type) -> np.ndarray:
    """A copy of the constant ``value`` as ``dtype``. An external tensor's cached read (for
    INT4, unpacked to one byte per value) is dropped, so that a pass walking every weight of a
    large model holds one weight at a time, not the whole model."""
    tensor = value.const_value
    assert tensor is not None, f"{value.name} is not a constant"
    array = tensor.numpy().astype(dtype)  # astype copies: never a view of a memory map
    if isinstance(tensor, ir.ExternalTensor):
        with contextlib.suppress(BufferError):  # a reader still holds a view: the map stays
            tensor.release()
    return array


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


CHUNK_BYTES = 512 * 2**20  # float64 working size above which a separable transform is chunked
SLICE_BYTES = 64 * 2**20  # and the float64 size of each slice it is then transformed in


def transform_constant(node: ir.Node, value: ir.Value, fn, axis: int | None = None) -> None:
    """Make ``value`` (an input of ``node``) private to it, then set it to ``fn(float64 data)``.

    ``axis``: ``fn`` acts on slices along that axis independently (rows of ``E @ Q``, columns of
    ``Qᵀ B``), so a large tensor is transformed in slices and never held whole in float64."""
    own = private_constant(node, list(node.inputs).index(value))
    data = constant_array(own)
    if axis is None or data.size * 8 <= CHUNK_BYTES:
        set_constant(own, fn(data.astype(np.float64)))
        return
    out = data if data.flags.writeable else np.empty_like(data)  # in place: fn is separable
    step = max(1, SLICE_BYTES // (8 * (data.size // data.shape[axis])))
    for start in range(0, data.shape[axis], step):
        part = [slice(None)] * data.ndim
        part[axis] = slice(start, start + step)
        out[tuple(part)] = fn(data[tuple(part)].astype(np.float64))
    set_constant(own, out)


def remove_if_dead(graph: ir.Graph, node: ir.Node) -> bool:
    """Remove ``node`` if nothing reads its outputs, then the initializers only it read."""
    if any(out.uses() or out.is_graph_output() for out in node.outputs):
        return False
    inputs = list(node.inputs)  # removing the node detaches them
    graph.remove(node, safe=True)
    drop_dead_initializers(graph, inputs)
    return True


def drop_dead_initializers(graph: ir.Graph, values: Iterable[ir.Value | None]) -> list[str]:
    """Remove each of ``values`` that is an initializer of ``graph`` nothing reads any more (no
    node input, no graph output); return the names removed. Values still read, or not
    initializers, are left as they are: the exporter shares equal constants between nodes."""
    dropped = []
    for value in values:
        if value is None or value.uses() or value.is_graph_output():
            continue
        if value.name is not None and graph.initializers.get(value.name) is value:
            graph.initializers.pop(value.name)
            dropped.append(value.name)
    return dropped
