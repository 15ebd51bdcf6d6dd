"""KV-cache quantization with BiSup's prompt mixed precision.

Every ``present.{i}.key/value`` output is ``Concat(past, new, axis=-2)`` with ``new [B, H_kv, S,
D]`` (keys after RoPE). The pass quantizes ``new`` per head per token (dynamic symmetric
INT8/INT4 over D, semantics in ``core/qdq.py``), so the cache holds — and attention reads —
quantized entries, exactly as a deployment with a low-bit cache would. Entries at positions
``< P`` (the system prompt) stay in the compute dtype::

    new := Where(position_ids < P, new, QDQ(new))

With ``rotate`` (default), each head's vector is quantized in a Hadamard-rotated basis:
``QDQ(new · H) · Hᵀ`` with ``H`` the normalized ``D × D`` Sylvester matrix. The rotation spreads a
head's outlier dimensions over all of them (QuaRot's K/V rotation); a deployment stores
``Q(new · H)`` and rotates the query instead, which gives the same attention scores.

``P`` is a graph input ``kv_fp_prefix`` (int64 scalar) whose initializer holds the compiled
default, so a runtime may override it per request and others need not feed it. The graph is
marked (metadata ``smoothrot.kv_quant``) and a marked graph is left alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from smoothrot.core.hadamard import rotation_factors
from smoothrot.core.manifest import KV_PREFIX_INPUT, ModelDims
from smoothrot.core.pass_infra import PassReport
from smoothrot.core.qdq import QuantBits
from smoothrot.passes._conditions import require_not_lowered
from smoothrot.passes._graph import new_initializer
from smoothrot.passes._qdq import dynamic_qdq
from smoothrot.passes.model_map import ModelMapError

__all__ = ["KV_PREFIX_INPUT", "KVQuantConfig", "KVQuantPass"]

_MARK = "smoothrot.kv_quant"


@dataclass(frozen=True)
class KVQuantConfig:
    bits: QuantBits = QuantBits.INT4
    keep_prefix: int = 0  # P: positions < P stay in the compute dtype
    rotate: bool = True  # quantize each head in a Hadamard-rotated basis

    def __post_init__(self) -> None:
        if not isinstance(self.bits, QuantBits):
            raise ValueError(f"bits must be a QuantBits, got {self.bits!r}")
        if self.keep_prefix < 0:
            raise ValueError(f"kept prompt length P must be >= 0, got {self.keep_prefix}")


def _cache_concats(graph: ir.Graph, dims: ModelDims) -> list[tuple[str, ir.Node]]:
    found = []
    outputs = {o.name: o for o in graph.outputs}
    for i in range(dims.layers):
        for kind in ("key", "value"):
            out = outputs.get(f"present.{i}.{kind}")
            node = out.producer() if out is not None else None
            ok = (
                node is not None
                and node.op_type == "Concat"
                and node.attributes.get_int("axis") in (2, -2)
                and len(node.inputs) == 2
                and node.inputs[0] is not None
                and node.inputs[0].name == f"past.{i}.{kind}"
            )
            if not ok:
                raise ModelMapError(f"present.{i}.{kind} is not Concat(past.{i}.{kind}, new)")
            found.append((f"layers.{i}.{kind}", node))
    return found


class KVQuantPass(ir.passes.InPlacePass):
    name = "quantize_kv"

    def __init__(self, dims: ModelDims, config: KVQuantConfig = KVQuantConfig()) -> None:
        super().__init__()
        self.dims, self.config = dims, config

    def requires(self, model: ir.Model) -> None:
        require_not_lowered(model, self.name)

    def call(self, model: ir.Model) -> PassReport:
        if model.metadata_props.get(_MARK):
            return PassReport(model, False, {"kv": model.metadata_props[_MARK]})
        graph = model.graph
        positions = next((v for v in graph.inputs if v.name == "position_ids"), None)
        if positions is None:
            raise ModelMapError("KV quantization needs the position_ids input")
        concats = _cache_concats(graph, self.dims)
        prefix = new_initializer(graph, KV_PREFIX_INPUT, np.array(self.config.keep_prefix))
        graph.inputs.append(prefix)
        first = concats[0][1]
        less = ir.node("Less", [positions, prefix], name="kv_quant.keep")
        axes = new_initializer(graph, "kv_quant.axes", np.array([1, 3], np.int64))
        keep = ir.node("Unsqueeze", [less.outputs[0], axes], name="kv_quant.keep4d")
        graph.insert_before(first, [less, keep])
        rot = rot_t = None
        if self.config.rotate:
            h = rotation_factors(self.dims.head_dim).dense.astype(np.float32)
            rot = new_initializer(graph, "kv_quant.hadamard", h)
            rot_t = new_initializer(graph, "kv_quant.hadamard_t", np.ascontiguousarray(h.T))
        for tag, concat in concats:
            new = concat.inputs[1]
            assert new is not None
            x, inserted = new, []
            if rot is not None:
                inserted.append(ir.node("MatMul", [new, rot], name=f"{tag}.rotate"))
                x = inserted[-1].outputs[0]
                graph.insert_before(concat, inserted[-1])
            q = dynamic_qdq(graph, x, self.config.bits, self.dims.head_dim, tag, _MARK, concat)
            if rot_t is not None:
                inserted.append(ir.node("MatMul", [q, rot_t], name=f"{tag}.unrotate"))
                q = inserted[-1].outputs[0]
                graph.insert_before(concat, inserted[-1])
            for node in inserted:
                node.metadata_props[_MARK] = "hadamard"
            where = ir.node("Where", [keep.outputs[0], new, q], name=f"{tag}.keep_prompt")
            where.metadata_props[_MARK] = f"prompt<{KV_PREFIX_INPUT}"
            graph.insert_before(concat, where)
            concat.replace_input_with(1, where.outputs[0])
        model.metadata_props[_MARK] = f"int{self.config.bits.value},P={self.config.keep_prefix}"
        return PassReport(model, True, {"kv": model.metadata_props[_MARK], "caches": len(concats)})
