"""Model map: recognize the decoder structure of an exported graph *structurally*.

What it finds, without relying on node or value names:

- every RMSNorm, in either form: the exporter's decomposed chain
  ``Mul(γ, Mul(x, Reciprocal(Sqrt(Add(ReduceMean(Pow(x, 2)), eps)))))`` (the pattern
  :mod:`smoothrot.passes.rules.rms_norm`) or opset-23 ``RMSNormalization(x, γ)``; ``x`` is the
  residual stream at that point;
- the constant-weight MatMuls each norm feeds (q/k/v after the attention norm, gate/up after the
  MLP norm, lm_head after the final norm) and the bias Add that may follow each (Qwen2);
- o_proj and down_proj: the one constant-weight MatMul between a norm and the next that is not
  fed by a norm, checked to write into the residual Add that feeds the next norm;
- q vs k vs v: v's output reaches the graph output ``present.{i}.value``, k's reaches
  ``present.{i}.key``; gate vs up: gate's output reaches a Sigmoid (SiLU), up's does not;
- the embedding Gather and its table.

Online rotations inserted by ``OnlineRotationPass`` (nodes marked ``smoothrot.rotation``) are
seen through: a MatMul reading a rotated norm output still counts as fed by that norm.

Anything that does not fit is collected in ``ModelMap.problems`` by name; ``require()`` turns
them into a ``ModelMapError`` so the passes refuse instead of guessing.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field

import onnx_ir as ir

from smoothrot.core.manifest import ModelDims
from smoothrot.passes._graph import (
    ROTATION_MARK,
    is_constant,
    producer_op,
    transform_constant,
    unrotated,
)
from smoothrot.passes.rules.rms_norm import match_rms_norm, statistics_nodes

__all__ = [
    "LAYER_SITES",
    "DecoderLayer",
    "Linear",
    "ModelMap",
    "ModelMapError",
    "Norm",
    "Site",
    "build_model_map",
    "find_norms",
]


class Site(enum.Enum):
    """A MatMul input that smoothing or rotation can act on (shared by q/k/v and gate/up)."""

    QKV = "qkv"
    O_PROJ = "o_proj"
    GATE_UP = "gate_up"
    DOWN_PROJ = "down_proj"
    LM_HEAD = "lm_head"


LAYER_SITES = frozenset({Site.QKV, Site.O_PROJ, Site.GATE_UP, Site.DOWN_PROJ})


class ModelMapError(ValueError):
    """The graph has a pattern the compiler does not recognize; the message names it."""


@dataclass(frozen=True)
class Norm:
    """An RMSNorm: ``output = x / rms(x) * gamma``; ``gamma`` is an initializer."""

    input: ir.Value
    output: ir.Value
    gamma: ir.Value
    node: ir.Node  # the node that multiplies by gamma (or the RMSNormalization node)
    # Pow, ReduceMean, Add, Sqrt, Reciprocal of the decomposed form (none for RMSNormalization)
    statistics: tuple[ir.Node, ...] = ()


@dataclass(frozen=True)
class Linear:
    """A constant-weight MatMul ``y = x @ B (+ bias)``, ``B = weight`` of shape ``[K, N]``: an
    initializer, or the output of a DequantizeLinear of constants (a quantized weight)."""

    node: ir.Node
    weight: ir.Value
    bias: ir.Value | None
    bias_node: ir.Node | None

    @property
    def input(self) -> ir.Value:
        x = self.node.inputs[0]
        assert x is not None
        return x

    @property
    def output(self) -> ir.Value:
        """The value after the bias Add, if any."""
        node = self.bias_node or self.node
        return node.outputs[0]

    @property
    def name(self) -> str:
        return self.weight.name or "?"

    @property
    def dequantize(self) -> ir.Node | None:
        """The DequantizeLinear producing ``B`` once the weight is quantized, else None."""
        return producer_op(self.weight, "DequantizeLinear")

    def transform_weight(self, fn, axis: int | None = None) -> None:
        """``B := fn(B)`` (float64 in, stored in B's dtype), on a copy only this MatMul reads;
        ``axis``: ``fn`` is separable along it (see ``transform_constant``)."""
        if self.dequantize is not None:
            raise ModelMapError(f"{self.name} is already quantized; exact passes must run first")
        transform_constant(self.node, self.weight, fn, axis)

    def transform_bias(self, fn) -> None:
        if self.bias is not None and self.bias_node is not None:
            transform_constant(self.bias_node, self.bias, fn)


@dataclass(frozen=True)
class DecoderLayer:
    index: int
    attn_norm: Norm
    q: Linear
    k: Linear
    v: Linear
    o: Linear
    mlp_norm: Norm
    gate: Linear
    up: Linear
    down: Linear

    def linears(self) -> list[Linear]:
        return [self.q, self.k, self.v, self.o, self.gate, self.up, self.down]


@dataclass
class ModelMap:
    dims: ModelDims
    layers: list[DecoderLayer] = field(default_factory=list)
    final_norm: Norm | None = None
    lm_head: Linear | None = None
    embedding: ir.Node | None = None
    problems: list[str] = field(default_factory=list)

    def require(self, fp_weights: bool = False) -> ModelMap:
        """Raise on unrecognized patterns; with ``fp_weights``, also on quantized weights (exact
        passes rewrite float weights and must run before quantization)."""
        if self.problems:
            raise ModelMapError("unrecognized model pattern: " + "; ".join(self.problems))
        if fp_weights:
            done = [lin.name for lin in self.linears() if lin.dequantize is not None]
            if done:
                raise ModelMapError(f"{done[0]} is already quantized; exact passes must run first")
        return self

    def site_groups(self) -> list[tuple[Site, str, list[Linear]]]:
        """Each MatMul input site with a tag and the Linears that read it (q/k/v share one)."""
        groups: list[tuple[Site, str, list[Linear]]] = []
        for layer in self.layers:
            i = layer.index
            groups += [
                (Site.QKV, f"layers.{i}.qkv", [layer.q, layer.k, layer.v]),
                (Site.O_PROJ, f"layers.{i}.o_proj", [layer.o]),
                (Site.GATE_UP, f"layers.{i}.gate_up", [layer.gate, layer.up]),
                (Site.DOWN_PROJ, f"layers.{i}.down_proj", [layer.down]),
            ]
        if self.lm_head is not None:
            groups.append((Site.LM_HEAD, "lm_head", [self.lm_head]))
        return groups

    def linears(self) -> list[Linear]:
        """Every Linear of the decoder layers, then lm_head."""
        out = [lin for layer in self.layers for lin in layer.linears()]
        return out + ([self.lm_head] if self.lm_head is not None else [])

    def norm_consumers(self) -> list[tuple[Norm, list[Linear]]]:
        """Each norm with the Linears it feeds (attention, MLP, final)."""
        out = []
        for layer in self.layers:
            out.append((layer.attn_norm, [layer.q, layer.k, layer.v]))
            out.append((layer.mlp_norm, [layer.gate, layer.up]))
        if self.final_norm is not None and self.lm_head is not None:
            out.append((self.final_norm, [self.lm_head]))
        return out


def find_norms(model: ir.Model) -> list[Norm]:
    """Every RMSNorm of the graph (either form), in graph order."""
    norms = []
    for node in model.graph:
        if node.op_type == "RMSNormalization" and node.inputs[1] is not None:
            if node.inputs[1].is_initializer() and node.inputs[0] is not None:
                norms.append(Norm(node.inputs[0], node.outputs[0], node.inputs[1], node))
        elif node.op_type == "Mul" and (match := match_rms_norm(model, node)):
            x, gamma = match.bindings["x"], match.bindings["gamma"]
            norms.append(Norm(x, node.outputs[0], gamma, node, statistics_nodes(match)))
    return norms


def _linear(node: ir.Node) -> Linear | None:
    if node.op_type != "MatMul" or len(node.inputs) != 2 or not node.inputs[1]:
        return None
    if node.metadata_props.get(ROTATION_MARK):
        return None
    weight = node.inputs[1]
    if len(weight.shape or ()) != 2:
        return None
    initializer = weight.is_initializer() and weight.const_value is not None
    if not initializer and not _dequantized(weight):
        return None
    out = node.outputs[0]
    uses = list(out.consumers())
    if len(uses) == 1 and uses[0].op_type == "Add":
        add = uses[0]
        other = add.inputs[1] if add.inputs[0] is out else add.inputs[0]
        if is_constant(other) and other is not None and len(other.shape or ()) == 1:
            return Linear(node, weight, other, add)
    return Linear(node, weight, None, None)


def _dequantized(weight: ir.Value) -> bool:
    """``weight`` is a DequantizeLinear of constants (an INT4 weight written by WeightQuantPass)."""
    dq = producer_op(weight, "DequantizeLinear")
    return dq is not None and all(is_constant(v) for v in dq.inputs if v is not None)


def _reaches(value: ir.Value, predicate, limit: int = 40) -> bool:
    """Breadth-first from ``value`` through at most ``limit`` nodes."""
    seen: set[int] = set()
    queue = deque([value])
    while queue and len(seen) < limit:
        v = queue.popleft()
        if predicate(v, None):
            return True
        for node in v.consumers():
            if id(node) in seen:
                continue
            seen.add(id(node))
            if predicate(v, node):
                return True
            queue.extend(node.outputs)
    return False


def _to_output(name: str):
    return lambda v, node: node is None and v.is_graph_output() and v.name == name


def _to_sigmoid(v, node) -> bool:
    return node is not None and node.op_type == "Sigmoid"


def build_model_map(model: ir.Model, dims: ModelDims) -> ModelMap:
    """Recognize the decoder layers of ``model``; problems are recorded, not raised."""
    graph = model.graph
    mm = ModelMap(dims=dims)
    norms = find_norms(model)
    order = {id(n): i for i, n in enumerate(graph)}
    linears = [lin for node in graph if (lin := _linear(node)) is not None]
    fed: dict[int, list[Linear]] = {id(n.output): [] for n in norms}
    unfed: list[Linear] = []
    for lin in linears:
        fed.get(id(unrotated(lin.input)), unfed).append(lin)
    if len(norms) != 2 * dims.layers + 1:
        mm.problems.append(f"found {len(norms)} RMSNorms, expected {2 * dims.layers + 1}")
        return mm
    embed = [n for n in graph if n.op_type == "Gather" and is_constant(n.inputs[0])]
    mm.embedding = embed[0] if len(embed) == 1 else None
    if mm.embedding is None:
        mm.problems.append(f"expected one embedding Gather, found {len(embed)}")
    for i in range(dims.layers):
        layer = _build_layer(i, norms, fed, unfed, order, mm.problems)
        if layer is not None:
            mm.layers.append(layer)
    mm.final_norm = norms[-1]
    heads = fed[id(norms[-1].output)]
    if len(heads) == 1 and heads[0].weight.shape[1] == dims.vocab:
        mm.lm_head = heads[0]
    else:
        mm.problems.append("final norm does not feed exactly one vocab-sized MatMul (lm_head)")
    return mm


def _between(lins: list[Linear], order: dict[int, int], a: Norm, b: Norm) -> list[Linear]:
    lo, hi = order[id(a.node)], order[id(b.node)]
    return [lin for lin in lins if lo < order[id(lin.node)] < hi]


def _writes_residual(lin: Linear, before: Norm, after: Norm) -> bool:
    """``lin``'s output is added to ``before``'s input and the sum feeds ``after``."""
    for node in lin.output.consumers():
        if node.op_type == "Add" and before.input in node.inputs and node.outputs[0] is after.input:
            return True
    return False


def _build_layer(i, norms, fed, unfed, order, problems) -> DecoderLayer | None:
    attn, mlp, nxt = norms[2 * i], norms[2 * i + 1], norms[2 * i + 2]
    qkv, gate_up = fed[id(attn.output)], fed[id(mlp.output)]
    o, down = _between(unfed, order, attn, mlp), _between(unfed, order, mlp, nxt)
    where = f"layer {i}"
    if len(qkv) != 3 or len(gate_up) != 2 or len(o) != 1 or len(down) != 1:
        problems.append(
            f"{where}: expected q/k/v, o, gate/up, down MatMuls, found "
            f"{len(qkv)}, {len(o)}, {len(gate_up)}, {len(down)}"
        )
        return None
    v = [lin for lin in qkv if _reaches(lin.output, _to_output(f"present.{i}.value"))]
    k = [lin for lin in qkv if _reaches(lin.output, _to_output(f"present.{i}.key"))]
    q = [lin for lin in qkv if lin not in v and lin not in k]
    gate = [lin for lin in gate_up if _reaches(lin.output, _to_sigmoid, limit=3)]
    up = [lin for lin in gate_up if lin not in gate]
    if not (len(q) == len(k) == len(v) == 1):
        problems.append(f"{where}: cannot tell q, k and v apart through present.{i}.key/value")
        return None
    if not (len(gate) == len(up) == 1):
        problems.append(f"{where}: cannot tell gate from up (expected one SiLU gate)")
        return None
    if not _writes_residual(o[0], attn, mlp) or not _writes_residual(down[0], mlp, nxt):
        problems.append(f"{where}: o_proj/down_proj do not write the residual stream")
        return None
    return DecoderLayer(i, attn, q[0], k[0], v[0], o[0], mlp, gate[0], up[0], down[0])
