"""Lower the exporter's attention to one ``smoothrot.ort::GroupedAttention`` node per layer.

``torch.onnx`` writes ``scaled_dot_product_attention`` with grouped K/V heads as::

    K_h = Reshape(Expand(Unsqueeze(K, [2])))           # repeat each K/V head H / KV times
    Kᵀ  = Reshape(Transpose(Reshape(K_h, [-1, T, D]), [0, 2, 1]), [B, H, D, T])
    P   = Softmax(MatMul(Mul(Q, c₁), Mul(Kᵀ, c₂)) + Where(mask, 0, m))
    out = MatMul(Where(IsNaN(P), 0, P), V_h)

which copies the whole cache three times per layer and decoded token (two repeats and a
transpose) across some 20 nodes. ``GroupedAttention(Q, K, V, mask; scale=c₁·c₂,
masked_value=m)`` computes the same values (up to fp32 rounding: ``c₁·c₂`` is applied once) and
reads ``K, V`` in place. Every piece is checked — the repeat's shapes (from the graph's value
shapes), the transpose's shape tensors (``Shape``/``Slice``/``Concat`` of ``K_h`` spelling
``[-1, T, D]`` and ``[B, H, D, T]``), scalar constants, the NaN guard, float32 — and a Softmax
whose surroundings are anything else is reported by name in ``skipped`` and left alone. Nodes
that only fed the replaced MatMul are removed afterwards.
"""

from __future__ import annotations

import enum

import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from smoothrot.core.pass_infra import PassReport
from smoothrot.ortops.spec import DOMAIN as ORTOPS_DOMAIN
from smoothrot.ortops.spec import OP_TYPE_ATTENTION
from smoothrot.passes._graph import constant_array, is_constant, scalar_constant

__all__ = ["AttentionKernel", "LowerAttentionPass"]


class AttentionKernel(enum.StrEnum):
    ORTOPS = "ortops"  # one smoothrot.ort::GroupedAttention node per layer (our custom op)
    STANDARD = "standard"  # the exporter's nodes, as compiled


class _Refused(Exception):
    """Why a Softmax's surroundings are not the pattern (internal)."""


def _op(value: ir.Value | None, op_type: str) -> ir.Node:
    node = value.producer() if value is not None else None
    if node is None or node.op_type != op_type or node.domain != "":
        raise _Refused(f"expected {op_type} producing {value.name if value else None}")
    return node


def _split(node: ir.Node) -> tuple[ir.Value, float]:
    """``(x, c)`` of a binary node with one scalar constant input ``c``."""
    a, b = node.inputs[0], node.inputs[1]
    for x, c in ((a, b), (b, a)):
        value = scalar_constant(c)
        if value is not None and x is not None and not is_constant(x):
            return x, value
    raise _Refused(f"{node.op_type} {node.name} has no scalar constant input")


def _dims(value: ir.Value) -> list[str]:
    shape = value.shape
    if shape is None or any(str(d) in ("None", "") for d in shape):
        raise _Refused(f"shape of {value.name} is not recorded")
    return [str(d) for d in shape]


def _repeated_heads(value: ir.Value) -> tuple[ir.Value, int]:
    """``(K, rep)`` for ``Reshape(Expand(Unsqueeze(K, [2])))`` repeating each head ``rep``×."""
    reshape = _op(value, "Reshape")
    expand = _op(reshape.inputs[0], "Expand")
    unsqueeze = _op(expand.inputs[0], "Unsqueeze")
    axes = unsqueeze.inputs[1]
    if not is_constant(axes) or constant_array(axes).reshape(-1).tolist() != [2]:  # type: ignore[arg-type]
        raise _Refused("the head repeat does not unsqueeze axis 2")
    source = unsqueeze.inputs[0]
    assert source is not None
    b, kv, t, d = _dims(source)
    eb, ekv, rep, et, ed = _dims(expand.outputs[0])
    if [eb, ekv, et, ed] != [b, kv, t, d] or not rep.isdigit() or not kv.isdigit():
        raise _Refused("the head repeat's Expand is not [B, KV, rep, T, D]")
    if _dims(reshape.outputs[0]) != [b, str(int(kv) * int(rep)), t, d]:
        raise _Refused("the head repeat's Reshape is not [B, KV·rep, T, D]")
    return source, int(rep)


def _shape_spelling(shape: ir.Value | None, source: ir.Value) -> list[str | int]:
    """What a ``Concat`` of constants and ``Slice(Shape(source))`` spells: source dims as
    ``"d0".."d3"``, constants as ints."""
    out: list[str | int] = []
    for part in _op(shape, "Concat").inputs:
        if is_constant(part):
            out += [int(x) for x in constant_array(part).reshape(-1)]  # type: ignore[arg-type]
            continue
        piece = _op(part, "Slice")
        shape_node = _op(piece.inputs[0], "Shape")
        extra = [v for v in piece.inputs[3:] if v is not None]
        start_attr = shape_node.attributes.get("start")
        whole = "end" not in shape_node.attributes and (
            start_attr is None or start_attr.as_int() == 0
        )
        if shape_node.inputs[0] is not source or not whole or extra:
            raise _Refused("a transpose shape is not sliced from the repeated K's shape")
        bounds = [scalar_constant(v) for v in piece.inputs[1:3]]
        if None in bounds:
            raise _Refused("a transpose shape slice has non-constant bounds")
        start, end = (int(x) for x in bounds)  # type: ignore[arg-type]
        out += [f"d{i}" for i in range(4)[start:end]]
    return out


def _transposed(value: ir.Value) -> ir.Value:
    """``K_h`` for ``Reshape(Transpose(Reshape(K_h, [-1, T, D]), [0, 2, 1]), [B, H, D, T])``."""
    outer = _op(value, "Reshape")
    transpose = _op(outer.inputs[0], "Transpose")
    inner = _op(transpose.inputs[0], "Reshape")
    perm = transpose.attributes.get("perm")
    k_heads = inner.inputs[0]
    if perm is None or list(perm.as_ints()) != [0, 2, 1] or k_heads is None:
        raise _Refused("K is not transposed by perm [0, 2, 1]")
    if _shape_spelling(inner.inputs[1], k_heads) != [-1, "d2", "d3"]:
        raise _Refused("K is not viewed as [-1, T, D] before its transpose")
    if _shape_spelling(outer.inputs[1], k_heads) != ["d0", "d1", "d3", "d2"]:
        raise _Refused("the transposed K is not viewed as [B, H, D, T]")
    return k_heads


def _match(softmax: ir.Node) -> tuple[ir.Node, ir.Node]:
    """``(the output MatMul, the GroupedAttention node replacing it)`` for ``softmax``."""
    axis = softmax.attributes.get("axis")
    if axis is None or axis.as_int() not in (-1, 3):
        raise _Refused("Softmax is not over the last axis")
    probs = softmax.outputs[0]
    guards = [u.node for u in probs.uses() if u.node.op_type == "Where"]
    isnan = [u.node for u in probs.uses() if u.node.op_type == "IsNaN"]
    if len(guards) != 1 or len(isnan) != 1 or guards[0].inputs[0] is not isnan[0].outputs[0]:
        raise _Refused("Softmax is not followed by the Where(IsNaN(P), 0, P) guard")
    guard = guards[0]
    if scalar_constant(guard.inputs[1]) != 0.0 or guard.inputs[2] is not probs:
        raise _Refused("the NaN guard does not write 0")
    out_mm = [u.node for u in guard.outputs[0].uses() if u.node.op_type == "MatMul" and u.idx == 0]
    if len(out_mm) != 1:
        raise _Refused("the guarded probabilities do not feed one MatMul(P, V)")
    add = _op(softmax.inputs[0], "Add")
    scores_mm = next(
        (
            v.producer()
            for v in add.inputs
            if v is not None and v.producer() is not None and v.producer().op_type == "MatMul"
        ),
        None,
    )
    bias = next((v for v in add.inputs if v is not None and v.producer() is not scores_mm), None)
    if scores_mm is None or bias is None:
        raise _Refused("the scores are not MatMul(Q, Kᵀ) + bias")
    where = _op(bias, "Where")
    mask = where.inputs[0]
    masked = scalar_constant(where.inputs[2])
    if mask is None or mask.dtype != ir.DataType.BOOL or scalar_constant(where.inputs[1]) != 0.0:
        raise _Refused("the bias is not Where(bool mask, 0, m)")
    if masked is None:
        raise _Refused("the masked value is not a scalar constant")
    q, c1 = _split(_op(scores_mm.inputs[0], "Mul"))
    kt, c2 = _split(_op(scores_mm.inputs[1], "Mul"))
    k, rep = _repeated_heads(_transposed(kt))
    v, rep_v = _repeated_heads(out_mm[0].inputs[1])
    if rep_v != rep or q.dtype != ir.DataType.FLOAT or k.dtype != ir.DataType.FLOAT:
        raise _Refused("K and V repeats differ, or the attention is not float32")
    attrs = {"scale": float(c1 * c2), "masked_value": float(masked)}
    name = f"{out_mm[0].name or softmax.name}.grouped"
    node = ir.node(OP_TYPE_ATTENTION, [q, k, v, mask], attrs, domain=ORTOPS_DOMAIN, name=name)
    return out_mm[0], node


class LowerAttentionPass(ir.passes.InPlacePass):
    """``details``: ``lowered`` (count), ``skipped`` (Softmax name → why it stays)."""

    name = "lower_attention"

    def call(self, model: ir.Model) -> PassReport:
        graph = model.graph
        lowered, skipped = 0, {}
        for softmax in [n for n in graph if n.op_type == "Softmax" and n.domain == ""]:
            try:
                matmul, node = _match(softmax)
            except _Refused as why:
                skipped[softmax.name or "?"] = str(why)
                continue
            out = matmul.outputs[0]
            ir.convenience.replace_nodes_and_values(
                graph, matmul, [matmul], [node], [out], [node.outputs[0]]
            )
            lowered += 1
        if lowered:
            model.opset_imports.setdefault(ORTOPS_DOMAIN, 1)
            common_passes.RemoveUnusedNodesPass()(model)
        return PassReport(model, lowered > 0, {"lowered": lowered, "skipped": skipped})
