"""Model map: recognize the decoder structure of an exported graph *structurally*.

What it finds, without relying on node or value names:

- every RMSNorm, in either form: the exporter's decomposed chain
  ``Mul(γ, Mul(x, Reciprocal(Sqrt(Add(ReduceMean(Pow(x, 2)), eps)))))`` (the pattern
  :mod:`smoothrot.passes.rules.rms_norm`) or opset-23 ``RMSNormalization(x, γ)``; ``x`` is the
  residual stream at that point;
- the norms that feed constant-weight MatMuls (the *pre-norms*: q/k/v after the attention
  norm, gate/up after the MLP norm, lm_head after the final norm) and the bias Add that may
  follow each MatMul (Qwen2); a norm's γ may be a folded constant such as Gemma's ``1 + w``;
- o_proj and down_proj: the one constant-weight MatMul between a pre-norm and the next that is
  not fed by a norm, checked to write into the residual Add that feeds the next pre-norm, either
  directly (Llama) or through a *post-norm* (Gemma 3: ``post_attention_layernorm``,
  ``post_feedforward_layernorm``);
- per-head *q/k norms* (Qwen3, Gemma 3): a norm over ``head_dim`` whose input is the q or k
  projection, only reshaped or transposed;
- q vs k vs v: v's output reaches the graph output ``present.{i}.value``, k's reaches
  ``present.{i}.key``; gate vs up: gate's output reaches a nonlinearity (SiLU's Sigmoid, GeLU,
  Tanh, Erf) before any MatMul, up's does not;
- the embedding Gather and its table (a constant scale after it, as Gemma's √hidden, is part of
  the residual stream it starts).

A norm that is none of these is reported by name.

Online rotations inserted by ``OnlineRotationPass`` (nodes marked ``smoothrot.rotation``) are
seen through: a MatMul reading a rotated norm output still counts as fed by that norm.

Anything that does not fit is collected in ``ModelMap.problems`` by name; ``require()`` turns
them into a ``ModelMapError`` so the passes refuse instead of guessing.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import onnx_ir as ir

from smoothrot.core.manifest import ModelDims
from smoothrot.passes._graph import ROTATION_MARK, is_constant, producer_op, unrotated
from smoothrot.passes.model_parts import (
    LAYER_SITES,
    DecoderLayer,
    Linear,
    ModelMapError,
    Norm,
    Site,
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

    def post_norms(self) -> list[Norm]:
        """Every post-norm (between a Linear that writes the residual and the residual Add)."""
        return [n for layer in self.layers for n in layer.post_norms()]

    def norm_consumers(self) -> list[tuple[Norm, list[Linear]]]:
        """Each pre-norm with the Linears it feeds (attention, MLP, final)."""
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


# Elementwise nonlinearities a gated MLP's gate passes through (SiLU = x·Sigmoid(x); GeLU as the
# opset-20 op or decomposed with Tanh or Erf).
_ACTIVATIONS = frozenset({"Sigmoid", "Gelu", "Tanh", "Erf", "Relu", "Softplus", "HardSigmoid"})


def _to_activation(v, node) -> bool:
    return node is not None and node.op_type in _ACTIVATIONS


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
    pre = [n for n in norms if fed[id(n.output)]]
    others = [n for n in norms if not fed[id(n.output)]]
    if len(pre) != 2 * dims.layers + 1:
        mm.problems.append(
            f"found {len(pre)} RMSNorms that feed MatMuls, expected {2 * dims.layers + 1}"
        )
        return mm
    embed = [n for n in graph if n.op_type == "Gather" and is_constant(n.inputs[0])]
    mm.embedding = embed[0] if len(embed) == 1 else None
    if mm.embedding is None:
        mm.problems.append(f"expected one embedding Gather, found {len(embed)}")
    for i in range(dims.layers):
        layer = _build_layer(i, pre, others, fed, unfed, order, mm.problems, dims.head_dim)
        if layer is not None:
            mm.layers.append(layer)
    mm.final_norm = pre[-1]
    heads = fed[id(pre[-1].output)]
    if len(heads) == 1 and heads[0].weight.shape[1] == dims.vocab:
        mm.lm_head = heads[0]
    else:
        mm.problems.append("final norm does not feed exactly one vocab-sized MatMul (lm_head)")
    if len(mm.layers) == dims.layers:
        known = {id(n) for layer in mm.layers for n in (layer.q_norm, layer.k_norm)}
        known |= {id(n) for n in mm.post_norms()}
        for norm in others:
            if id(norm) not in known:
                mm.problems.append(
                    f"RMSNorm with γ {norm.gamma.name!r} is neither before a MatMul, nor after "
                    "o_proj/down_proj, nor a per-head q/k norm"
                )
    return mm


def _between(lins: list[Linear], order: dict[int, int], a: Norm, b: Norm) -> list[Linear]:
    lo, hi = order[id(a.node)], order[id(b.node)]
    return [lin for lin in lins if lo < order[id(lin.node)] < hi]


def _post_norm(lin: Linear, others: list[Norm]) -> Norm | None:
    """The norm that reads ``lin``'s output and nothing else, if there is one."""
    found = [n for n in others if n.input is lin.output]
    return found[0] if len(found) == 1 else None


def _writes_residual(out: ir.Value, before: Norm, after: Norm) -> bool:
    """``out`` is added to ``before``'s input and the sum feeds ``after``."""
    for node in out.consumers():
        if node.op_type == "Add" and before.input in node.inputs and node.outputs[0] is after.input:
            return True
    return False


_HEAD_VIEWS = frozenset({"Reshape", "Transpose", "Unsqueeze", "Squeeze"})


def _head_norm(lin: Linear, others: list[Norm], head_dim: int) -> Norm | None:
    """The per-head norm of ``lin``'s output (over ``head_dim``, after only reshapes)."""
    frontier, seen = [lin.output], 0
    while frontier and seen < 4:
        seen += 1
        found = [n for n in others for v in frontier if n.input is v]
        if found:
            gamma = found[0].gamma.const_value
            return found[0] if gamma is not None and gamma.size == head_dim else None
        frontier = [o for v in frontier for u in v.consumers() if u.op_type in _HEAD_VIEWS
                    for o in u.outputs]  # fmt: skip
    return None


def _build_layer(i, norms, others, fed, unfed, order, problems, head_dim) -> DecoderLayer | None:
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
    gate = [lin for lin in gate_up if _reaches(lin.output, _to_activation, limit=3)]
    up = [lin for lin in gate_up if lin not in gate]
    if not (len(q) == len(k) == len(v) == 1):
        problems.append(f"{where}: cannot tell q, k and v apart through present.{i}.key/value")
        return None
    if not (len(gate) == len(up) == 1):
        problems.append(f"{where}: cannot tell gate from up (expected one activated gate)")
        return None
    post_attn, post_mlp = _post_norm(o[0], others), _post_norm(down[0], others)
    o_out = post_attn.output if post_attn else o[0].output
    down_out = post_mlp.output if post_mlp else down[0].output
    if not _writes_residual(o_out, attn, mlp) or not _writes_residual(down_out, mlp, nxt):
        problems.append(f"{where}: o_proj/down_proj do not write the residual stream")
        return None
    q_norm, k_norm = _head_norm(q[0], others, head_dim), _head_norm(k[0], others, head_dim)
    return DecoderLayer(
        i, attn, q[0], k[0], v[0], o[0], mlp, gate[0], up[0], down[0],
        post_attn, post_mlp, q_norm, k_norm,
    )  # fmt: skip
