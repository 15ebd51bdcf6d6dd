"""Fold ``MatMul(x, Transpose(W))`` into ``MatMul(x, Wᵀ)`` with ``Wᵀ`` a new initializer.

The exporter's constant folding skips large tensors, so a tied lm_head arrives as a Transpose of
the embedding table. Every later pass expects ``B = Wᵀ`` as an initializer; the embedding Gather
keeps reading the original table. Only a 2-D Transpose of an initializer with ``perm`` absent or
``[1, 0]`` is folded; Transposes nobody reads any more are removed. Idempotent.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from smoothrot.core.pass_infra import PassReport
from smoothrot.passes._graph import new_initializer

__all__ = ["FoldTransposedWeightsPass"]


class FoldTransposedWeightsPass(ir.passes.InPlacePass):
    name = "fold_transposed_weights"

    def call(self, model: ir.Model) -> PassReport:
        folded = 0  # MatMuls re-pointed and Transposes removed
        for node in list(model.graph):
            if node.op_type != "MatMul" or len(node.inputs) < 2 or node.inputs[1] is None:
                continue
            producer = node.inputs[1].producer()
            if producer is None or producer.op_type != "Transpose":
                continue
            w = producer.inputs[0]
            perm = producer.attributes.get_ints("perm", None)
            if (
                w is None
                or not w.is_initializer()
                or w.const_value is None
                or (perm is not None and tuple(perm) != (1, 0))
            ):
                continue
            wt = new_initializer(
                model.graph, f"{w.name}.T", np.ascontiguousarray(w.const_value.numpy().T)
            )
            node.replace_input_with(1, wt)
            folded += 1
        for node in list(model.graph):
            if node.op_type == "Transpose" and not any(o.uses() for o in node.outputs):
                model.graph.remove(node, safe=True)
                folded += 1
        return PassReport(model, folded > 0, {"folded": folded})
