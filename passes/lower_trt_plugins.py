"""Lower INT4 QDQ MatMuls and online Hadamard rotations to our TensorRT AOT plugin nodes.

Rewrites (plugins: :mod:`smoothrot.plugins.trt_spec`; their numpy semantics:
:func:`plugin_reference`):

- ``MatMul(X, DequantizeLinear(q, scale))`` with ``q`` a blocked INT4 constant ``[K, N]`` and no
  zero point (:mod:`smoothrot.passes.rules.int4_matmul`) → ``w4a16_gemm(X, w, s)``;
- the same with ``X`` the output of the per-token INT8 dynamic QDQ (:mod:`smoothrot.passes._qdq`,
  the activation-quantization nodes, :mod:`smoothrot.passes.rules.act_qdq`) → ``w4a8_gemm(x, w,
  s)`` reading the raw ``x``; the QDQ nodes go once nothing else reads them;
- ``Reshape [.., m, p] → MatMul(·, B) → MatMul(Aᵀ, ·) → Reshape [.., n]`` with the online-rotation
  mark (:mod:`smoothrot.passes.online_rotation`) → ``kron_hadamard(x, A, B)`` (the rule
  :class:`~smoothrot.passes.rules.rotation.KronHadamard`).

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
from smoothrot.passes._conditions import require_float32
from smoothrot.passes._graph import ACT_QUANT_MARK, new_initializer, remove_if_dead
from smoothrot.passes.rules.act_qdq import match_act_qdq
from smoothrot.passes.rules.int4_matmul import Int4MatMul, int4_matmuls
from smoothrot.passes.rules.rotation import (
    KronHadamard,
    is_rotation_start,
    lower_rotation,
    rotation_tag,
)
from smoothrot.plugins.packing import pack_int4
from smoothrot.plugins.trt_spec import NAMESPACE, GemmAttrs, PluginOp

__all__ = ["LowerToTrtPluginsPass", "LoweredPlugin"]


@dataclass(frozen=True)
class LoweredPlugin:
    name: str  # the plugin node's name (the MatMul's or the rotation's)
    plugin: PluginOp
    attributes: dict[str, int]


class _Skipped(Exception):
    """Why one INT4 MatMul has no plugin node (internal; the graph is unchanged)."""


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


class LowerToTrtPluginsPass(ir.passes.InPlacePass):
    """INT4 MatMuls (with their INT8 activation QDQ) and online rotations → plugin nodes.

    ``details``: ``lowered`` (a :class:`LoweredPlugin` each), ``skipped`` (node name → why it
    stays)."""

    name = "lower_trt_plugins"

    def requires(self, model: ir.Model) -> None:
        require_float32(model, self.name)

    def call(self, model: ir.Model) -> PassReport:
        graph = model.graph
        lowered: list[LoweredPlugin] = []
        skipped: dict[str, str] = {}

        for found in int4_matmuls(model, skipped):
            try:
                lowered.append(_lower_gemm(model, found))
            except _Skipped as why:
                skipped[found.name] = str(why)
        rule = KronHadamard().rule()
        for first in [n for n in graph if is_rotation_start(n)]:
            name = rotation_tag(first)
            outcome = lower_rotation(rule, model, first)
            if not outcome:
                skipped[name] = outcome.reason
                continue
            node = outcome.nodes[-1]
            attrs = {key: node.attributes.get_int(key) for key in ("m", "p")}
            lowered.append(LoweredPlugin(name, PluginOp.KRON_HADAMARD, attrs))
        for node in reversed(list(graph)):  # QDQ nodes that no MatMul reads any more
            if node.metadata_props.get(ACT_QUANT_MARK):
                remove_if_dead(graph, node)
        if lowered:
            model.opset_imports.setdefault(NAMESPACE, 1)
        return PassReport(model, bool(lowered), {"lowered": lowered, "skipped": skipped})


def _lower_gemm(model: ir.Model, m: Int4MatMul) -> LoweredPlugin:
    """The plugin node for one INT4 MatMul (:class:`_Skipped`, graph unchanged, if none fits)."""
    graph = model.graph
    name = m.matmul.name or (m.dq.outputs[0].name or "linear")
    x = m.matmul.inputs[0]
    assert x is not None
    k, n = m.q.shape
    source, op = x, PluginOp.W4A16_GEMM
    producer = x.producer()
    if producer is not None and producer.metadata_props.get(ACT_QUANT_MARK):
        qdq = match_act_qdq(model, producer, k)
        if not qdq:
            raise _Skipped(qdq.reason)
        source, op = qdq.bindings["x"], PluginOp.W4A8_GEMM
    try:
        attrs = GemmAttrs(k, n, Grouping.PER_OC if m.axis == 0 else Grouping.PER_IC, m.group)
    except ValueError as exc:
        raise _Skipped(str(exc)) from None
    packed = _initializer(graph, f"{name}.w_packed", pack_int4(m.q))
    scale = _initializer(graph, f"{name}.w_scale", np.ascontiguousarray(m.scale))
    node = _plugin_node(op, [source, packed, scale], attrs.onnx_attributes(), name)
    out = m.matmul.outputs[0]
    ir.convenience.replace_nodes_and_values(
        graph, m.matmul, [m.matmul], [node], [out], [node.outputs[0]]
    )
    remove_if_dead(graph, m.dq)
    return LoweredPlugin(name, op, attrs.onnx_attributes())
