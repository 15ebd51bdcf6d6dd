"""Lower INT4 QDQ MatMuls and online Hadamard rotations to our TensorRT AOT plugin nodes.

Rewrites (plugins: :mod:`smoothrot.plugins.trt_spec`; their numpy semantics:
:func:`plugin_reference`):

- ``MatMul(X, DequantizeLinear(q, scale))`` with ``q`` a blocked INT4 constant ``[K, N]`` and no
  zero point (:func:`~smoothrot.passes._graph.match_int4_matmul`) → ``w4a16_gemm(X, w, s)``;
- the same with ``X`` the output of the per-token INT8 dynamic QDQ (:mod:`smoothrot.passes._qdq`,
  the activation-quantization nodes, checked op by op) → ``w4a8_gemm(x, w, s)`` reading the raw
  ``x``; the QDQ nodes go once nothing else reads them;
- ``Reshape [.., m, p] → MatMul(·, B) → MatMul(Aᵀ, ·) → Reshape [.., n]`` with the online-rotation
  mark (:mod:`smoothrot.passes.online_rotation`) → ``kron_hadamard(x, A, B)``.

Each node: op_type = plugin name, domain and ``plugin_namespace`` = ``smoothrot``, ``aot = 1``
(TensorRT's ONNX parser then builds the AOT implementation), and the plugin's integer attributes
(shapes and group size, baked into the PTX at build time). Weights travel as packed INT8 ``[K,
N/2]`` (:mod:`smoothrot.plugins.packing`), scales and factors as fp32 initializers.

Anything else — an INT4 MatMul with a zero point or a run-time scale, a shape no kernel tile fits,
an activation QDQ other than per-token INT8, a rotation subgraph that is not exactly the four
nodes above — stays as it is and is reported by name in ``skipped``; nothing is guessed. Run it
on the fp32 QDQ graph (before an fp16 conversion raises the QDQ's 1e-12 scale floor).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from smoothrot.core.int4 import Grouping
from smoothrot.core.pass_infra import PassReport
from smoothrot.passes._graph import (
    ACT_QUANT_MARK,
    ROTATION_MARK,
    Int4MatMul,
    constant_array,
    is_constant,
    match_int4_matmul,
    new_initializer,
    remove_if_dead,
    scalar_constant,
)
from smoothrot.plugins.packing import pack_int4
from smoothrot.plugins.trt_spec import NAMESPACE, GemmAttrs, HadamardAttrs, PluginOp

__all__ = ["LowerToTrtPluginsPass", "LoweredPlugin"]

_TINY = float(np.float32(1e-12))


@dataclass(frozen=True)
class LoweredPlugin:
    name: str  # the plugin node's name (the MatMul's or the rotation's)
    plugin: PluginOp
    attributes: dict[str, int]


def _plugin_node(op: PluginOp, inputs: list[ir.Value], attrs: dict[str, int], name: str) -> ir.Node:
    attributes = {"plugin_namespace": NAMESPACE, "aot": 1, **attrs}
    return ir.node(op.value, inputs, attributes=attributes, domain=NAMESPACE, name=name)


def _initializer(graph: ir.Graph, base: str, array: np.ndarray) -> ir.Value:
    """A new initializer named ``base`` (``base.1``, ``base.2``, … if that name is taken)."""
    name, i = base, 0
    while name in graph.initializers:
        i += 1
        name = f"{base}.{i}"
    return new_initializer(graph, name, array)


def _producer(value: ir.Value | None, op_type: str) -> ir.Node | None:
    node = value.producer() if value is not None else None
    return node if node is not None and node.op_type == op_type and node.domain == "" else None


def _act_qdq_source(x: ir.Value, channels: int) -> ir.Value | str | None:
    """The raw input of the per-token INT8 QDQ that produced ``x``; a reason if ``x`` comes from
    an activation QDQ of another form; None if it does not come from one."""
    dq = x.producer()
    if dq is None or not dq.metadata_props.get(ACT_QUANT_MARK):
        return None
    q = _producer(dq.inputs[0], "QuantizeLinear") if dq.op_type == "DequantizeLinear" else None
    if q is None or len(q.inputs) != 2 or len(dq.inputs) != 2 or dq.inputs[1] is not q.inputs[1]:
        return "activation QDQ is not a QuantizeLinear/DequantizeLinear pair sharing one scale"
    if q.attributes.get_int("output_dtype", 0) != ir.DataType.INT8.value:
        return "activation QDQ is not INT8 (only per-token INT8 has a plugin, w4a8_gemm)"
    for node in (q, dq):
        if node.attributes.get_int("axis", 1) != -1:
            return "activation QDQ is not along the last axis"
        if node.attributes.get_int("block_size", 0) != channels:
            return f"activation QDQ blocks are not whole rows of {channels}"
    scale = _producer(q.inputs[1], "Max")
    div = _producer(scale.inputs[0], "Div") if scale else None
    amax = _producer(div.inputs[0], "ReduceMax") if div else None
    absx = _producer(amax.inputs[0], "Abs") if amax else None
    source = q.inputs[0]
    if (
        absx is None
        or absx.inputs[0] is not source
        or scalar_constant(div.inputs[1]) != 127.0  # type: ignore[union-attr]
        or scalar_constant(scale.inputs[1]) != _TINY  # type: ignore[union-attr]
        or amax.attributes.get_int("keepdims", 1) != 1  # type: ignore[union-attr]
        or not is_constant(amax.inputs[1])  # type: ignore[union-attr]
        or constant_array(amax.inputs[1]).tolist() != [-1]  # type: ignore[union-attr,arg-type]
    ):
        return "activation scale is not max(absmax(x) / 127, 1e-12) over the last axis"
    return source


def _rotation(first: ir.Node) -> tuple[list[ir.Node], np.ndarray, np.ndarray] | str:
    """The four nodes of the rotation starting at ``first`` and its factors (A, B); a reason if
    they are not exactly ``Reshape → MatMul(·, B) → MatMul(Aᵀ, ·) → Reshape``."""
    nodes = [first]
    for op_type, index in (("MatMul", 0), ("MatMul", 1), ("Reshape", 0)):
        value = nodes[-1].outputs[0]
        uses = list(value.uses())
        if (
            len(uses) != 1
            or value.is_graph_output()
            or uses[0].node.op_type != op_type
            or uses[0].idx != index
        ):
            return f"expected only a {op_type} to read the output of {nodes[-1].name!r}"
        nodes.append(uses[0].node)
    if not all(n.metadata_props.get(ROTATION_MARK) == "online" for n in nodes):
        return "not every node carries the online-rotation mark"
    split, b, at, merge = (
        nodes[0].inputs[1],
        nodes[1].inputs[1],
        nodes[2].inputs[0],
        nodes[3].inputs[1],
    )
    if not all(is_constant(v) for v in (split, b, at, merge)):
        return "shapes or factors are not constants"
    b_arr, at_arr = constant_array(b), constant_array(at)  # type: ignore[arg-type]
    m, p = at_arr.shape[0], b_arr.shape[0]
    if (
        at_arr.shape != (m, m)
        or b_arr.shape != (p, p)
        or constant_array(split).tolist() != [0, 0, m, p]  # type: ignore[arg-type]
        or constant_array(merge).tolist() != [0, 0, m * p]  # type: ignore[arg-type]
    ):
        return "reshapes are not [0, 0, m, p] / [0, 0, m·p] around square factors"
    return nodes, np.ascontiguousarray(at_arr.T, np.float32), np.asarray(b_arr, np.float32)


def _rotation_entry(node: ir.Node) -> bool:
    """A marked Reshape that is not the last node of a rotation (fed by a marked MatMul)."""
    if node.op_type != "Reshape" or not node.metadata_props.get(ROTATION_MARK):
        return False
    producer = node.inputs[0].producer() if node.inputs[0] is not None else None
    return not (
        producer is not None
        and producer.op_type == "MatMul"
        and producer.metadata_props.get(ROTATION_MARK)
    )


class LowerToTrtPluginsPass(ir.passes.InPlacePass):
    """INT4 MatMuls (with their INT8 activation QDQ) and online rotations → plugin nodes.

    ``details``: ``lowered`` (a :class:`LoweredPlugin` each), ``skipped`` (node name → why it
    stays)."""

    name = "lower_trt_plugins"

    def call(self, model: ir.Model) -> PassReport:
        graph = model.graph
        lowered: list[LoweredPlugin] = []
        skipped: dict[str, str] = {}

        def record(name: str, outcome: LoweredPlugin | str) -> None:
            if isinstance(outcome, str):
                skipped[name] = outcome
            else:
                lowered.append(outcome)

        for node in [n for n in graph if n.op_type == "MatMul" and n.domain == ""]:
            found = match_int4_matmul(node)
            if isinstance(found, str):
                skipped[node.name or "?"] = found
            elif found is not None:
                record(found.matmul.name or (found.dq.outputs[0].name or "linear"),
                       _lower_gemm(graph, found))  # fmt: skip
        for node in [n for n in graph if _rotation_entry(n)]:
            record((node.name or "rotation").removesuffix(".reshape_in"),
                   _lower_rotation(graph, node))  # fmt: skip
        for node in reversed(list(graph)):  # QDQ nodes that no MatMul reads any more
            if node.metadata_props.get(ACT_QUANT_MARK):
                remove_if_dead(graph, node)
        if lowered:
            model.opset_imports.setdefault(NAMESPACE, 1)
        return PassReport(model, bool(lowered), {"lowered": lowered, "skipped": skipped})


def _lower_gemm(graph: ir.Graph, m: Int4MatMul) -> LoweredPlugin | str:
    """The plugin node for one INT4 MatMul, or why there is none (graph unchanged)."""
    name = m.matmul.name or (m.dq.outputs[0].name or "linear")
    x = m.matmul.inputs[0]
    assert x is not None
    k, n = m.q.shape
    source = _act_qdq_source(x, k)
    if isinstance(source, str):
        return source
    op = PluginOp.W4A16_GEMM if source is None else PluginOp.W4A8_GEMM
    try:
        attrs = GemmAttrs(k, n, Grouping.PER_OC if m.axis == 0 else Grouping.PER_IC, m.group)
    except ValueError as exc:
        return str(exc)
    packed = _initializer(graph, f"{name}.w_packed", pack_int4(m.q))
    scale = _initializer(graph, f"{name}.w_scale", np.ascontiguousarray(m.scale))
    node = _plugin_node(op, [source or x, packed, scale], attrs.onnx_attributes(), name)
    out = m.matmul.outputs[0]
    ir.convenience.replace_nodes_and_values(
        graph, m.matmul, [m.matmul], [node], [out], [node.outputs[0]]
    )
    remove_if_dead(graph, m.dq)
    return LoweredPlugin(name, op, attrs.onnx_attributes())


def _lower_rotation(graph: ir.Graph, first: ir.Node) -> LoweredPlugin | str:
    """The plugin node for one online rotation, or why there is none (graph unchanged)."""
    name = (first.name or "rotation").removesuffix(".reshape_in")
    found = _rotation(first)
    if isinstance(found, str):
        return found
    nodes, a, b = found
    try:
        attrs = HadamardAttrs(a.shape[0], b.shape[0])
    except ValueError as exc:
        return str(exc)
    a_value = _initializer(graph, f"{name}.a", a)
    b_value = _initializer(graph, f"{name}.b", b)
    x = first.inputs[0]
    assert x is not None
    op = PluginOp.KRON_HADAMARD
    node = _plugin_node(op, [x, a_value, b_value], attrs.onnx_attributes(), name)
    node.metadata_props[ROTATION_MARK] = "online"
    out = nodes[-1].outputs[0]
    constants = [v for old in nodes for v in old.inputs if is_constant(v)]
    ir.convenience.replace_nodes_and_values(graph, first, nodes, [node], [out], [node.outputs[0]])
    for value in constants:
        if not value.uses() and value.name in graph.initializers:
            graph.initializers.pop(value.name)
    return LoweredPlugin(name, op, attrs.onnx_attributes())
