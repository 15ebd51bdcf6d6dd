"""Graph surgery on ``ModelProto``s whose weights stay on disk: which nodes of a one-layer
segment are the shared prefix, the layer and the suffix; a sub-model cut between named values
for ONNX Runtime.

A segment's **layer** is every node that depends on the residual stream entering it (``h_in``)
or on its own KV inputs (``past.0.*``) *and* that the residual leaving it (``h_out``) or its KV
outputs depend on. A node that reads only the *shape* of a KV input (the attention mask's length)
is not the layer's: every layer's cache has the same length, so it stays in the shared
**prefix** with the embedding, rotary tables and mask. The **suffix** is what reads ``h_out``
(final norm, lm_head).
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

__all__ = ["Parts", "ancestors", "cut_model", "split_parts"]


@dataclass(frozen=True)
class Parts:
    prefix: list[int]
    layer: list[int]
    suffix: list[int]


def _forward(nodes: list[onnx.NodeProto], starts: set[str], shape_of: set[str]) -> set[int]:
    live, reached = set(starts), set()
    for i, node in enumerate(nodes):
        reads = [x for x in node.input if x in live]
        if not reads:
            continue
        if node.op_type == "Shape" and all(x in shape_of for x in reads):
            continue
        reached.add(i)
        live.update(o for o in node.output if o)
    return reached


def ancestors(
    nodes: list[onnx.NodeProto], ends: set[str], stop: set[str] = frozenset()
) -> set[int]:
    needed, reached = set(ends), set()
    for i in range(len(nodes) - 1, -1, -1):
        if any(o in needed for o in nodes[i].output):
            reached.add(i)
            needed.update(x for x in nodes[i].input if x and x not in stop)
    return reached


def _constant_nodes(graph: onnx.GraphProto) -> set[int]:
    """Nodes computed from initializers alone (a quantized weight's DequantizeLinear)."""
    known = {t.name for t in graph.initializer} - {i.name for i in graph.input}
    found = set()
    for i, node in enumerate(graph.node):
        if all(x in known for x in node.input if x):
            found.add(i)
            known.update(node.output)
    return found


def split_parts(
    graph: onnx.GraphProto, h_in: str, h_out: str, kv_in: list[str], kv_out: list[str]
) -> Parts:
    """The prefix, layer and suffix nodes of a one-layer segment (see module docstring); a node
    computed from initializers alone belongs to the layer when only the layer reads it."""
    nodes = list(graph.node)
    down = _forward(nodes, {h_in, *kv_in}, set(kv_in))
    up = ancestors(nodes, {h_out, *kv_out}, {h_in})
    layer = down & up
    readers: dict[str, list[int]] = {}
    for i, node in enumerate(nodes):
        for x in node.input:
            readers.setdefault(x, []).append(i)
    outputs = {o.name for o in graph.output}
    for i in sorted(_constant_nodes(graph) & (up - down), reverse=True):
        users = [j for y in nodes[i].output for j in readers.get(y, [])]
        if users and all(j in layer for j in users) and not set(nodes[i].output) & outputs:
            layer.add(i)
    suffix = down - up
    prefix = set(range(len(nodes))) - down - layer
    return Parts(sorted(prefix), sorted(layer), sorted(suffix))


def cut_model(
    model: onnx.ModelProto, inputs: dict[str, onnx.ValueInfoProto], outputs: list[str]
) -> onnx.ModelProto:
    """The sub-model that computes ``outputs`` with ``inputs`` (name → its value info) given as
    graph inputs: only the nodes and initializers that needs; other graph inputs it reads stay."""
    g = model.graph
    nodes = list(g.node)
    keep = sorted(ancestors(nodes, set(outputs), set(inputs)))
    kept = [nodes[i] for i in keep]
    reads = {x for n in kept for x in n.input} | set(outputs)
    inits = [t for t in g.initializer if t.name in reads and t.name not in inputs]
    init_names = {t.name for t in inits}
    graph_inputs = [vi for vi in g.input if vi.name in reads and vi.name not in inputs]
    graph_inputs += list(inputs.values())
    out = onnx.helper.make_graph(
        kept,
        g.name,
        graph_inputs,
        [onnx.ValueInfoProto(name=n) for n in outputs],
        initializer=inits,
        value_info=[vi for vi in g.value_info if vi.name in reads and vi.name not in init_names],
    )
    cut = onnx.helper.make_model(out, opset_imports=list(model.opset_import))
    cut.ir_version = model.ir_version
    return cut
