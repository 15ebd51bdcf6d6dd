"""Pre- and postconditions the passes declare (``requires`` / ``ensures``).

Each check names the pass and says what to do instead, so a pass run out of order (an exact
transform after quantization, a lowering run twice on a lowered graph, fp16 conversion of an
fp16 graph) stops with one clear :class:`~smoothrot.core.pass_infra.PassPreconditionError`.
"""

from __future__ import annotations

import onnx_ir as ir

from smoothrot.core.pass_infra import PassPreconditionError

__all__ = [
    "LOWERED_DOMAINS",
    "ensure_blocked_int4",
    "int4_dequantizers",
    "require_float32",
    "require_float_weights",
    "require_not_lowered",
]

# Node domains of lowered graphs: ONNX Runtime's contrib ops, our ORT ops, our TensorRT plugins.
LOWERED_DOMAINS = ("com.microsoft", "smoothrot.ort", "smoothrot")


def int4_dequantizers(graph: ir.Graph) -> list[ir.Node]:
    """Every ``DequantizeLinear`` of an INT4 constant."""
    out = []
    for node in graph:
        q = node.inputs[0] if node.op_type == "DequantizeLinear" and node.inputs else None
        if q is not None and q.dtype == ir.DataType.INT4 and q.const_value is not None:
            out.append(node)
    return out


def require_float_weights(model: ir.Model, step: str) -> None:
    """Exact transforms rewrite float weights: refuse a graph that already has INT4 ones."""
    found = int4_dequantizers(model.graph)
    if found:
        raise PassPreconditionError(
            f"{step} needs float weights, but the graph already has {len(found)} INT4 weights "
            f"(e.g. {found[0].outputs[0].name!r}); exact transforms run before quantize_weights"
        )


def require_not_lowered(model: ir.Model, step: str) -> None:
    graph = model.graph
    lowered = sorted({f"{n.domain}::{n.op_type}" for n in graph if n.domain in LOWERED_DOMAINS})
    if lowered:
        raise PassPreconditionError(
            f"{step} needs the QDQ graph, but this graph is already lowered ({', '.join(lowered)})"
        )


def require_float32(model: ir.Model, step: str) -> None:
    """The graph computes in float32: no fp16 graph input or initializer."""
    graph = model.graph
    half = [v.name for v in (*graph.inputs, *graph.initializers.values())
            if v.dtype == ir.DataType.FLOAT16]  # fmt: skip
    if half:
        raise PassPreconditionError(
            f"{step} needs a float32 graph, but {half[0]!r} (and {len(half) - 1} more) is fp16"
        )


def ensure_blocked_int4(model: ir.Model, step: str) -> None:
    """Every INT4 ``DequantizeLinear`` has an axis and a ``block_size`` (opset-21 blocked QDQ)."""
    for node in int4_dequantizers(model.graph):
        if node.attributes.get_int("block_size", 0) <= 0 or "axis" not in node.attributes:
            raise ir.passes.PostconditionError(
                f"{step}: {node.name!r} is an INT4 DequantizeLinear without axis and block_size"
            )
