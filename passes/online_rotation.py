"""Online rotation before chosen MatMul inputs: ``x := x R``, ``B := Rᵀ B`` (exact).

``R = A ⊗ B`` (see ``hadamard.py``) is applied to ``x [..., n]`` as
``Reshape [..., m, p] → MatMul(·, B) → MatMul(Aᵀ, ·) → Reshape [..., n]``, i.e.
``O(n·(m + p))`` per token, never one dense ``n × n`` MatMul. MatMuls that share an input
(q/k/v, gate/up) share one rotation. Sites: the norm-fed inputs (q/k/v, gate/up, lm_head), the
o_proj input and the down_proj input. An input already produced by one of our rotations is
left alone, so the pass is idempotent. Each inserted node carries the metadata
``smoothrot.rotation = online`` and the rotation's factor sizes.

With ``residual_fallback``, where the fused residual rotation was blocked (the model's mark
has no ``r1``, see ``residual_rotation.py``), the inputs it would have rotated (q/k/v and
gate/up) are rotated online as well, so a post-norm model gets the same incoherence there.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from smoothrot.core.hadamard import FACTORED_MIN, rotation_factors
from smoothrot.core.manifest import ModelDims
from smoothrot.core.pass_infra import PassReport
from smoothrot.passes._conditions import require_float_weights
from smoothrot.passes._graph import (
    ROTATION_MARK,
    constant_array,
    new_initializer,
)
from smoothrot.passes.model_map import LAYER_SITES, Linear, Site, build_model_map
from smoothrot.passes.residual_rotation import RESIDUAL_ROTATION_MARK

__all__ = ["OnlineRotationPass"]


def _rotate_input(graph: ir.Graph, linears: list[Linear], tag: str, seed: int) -> bool:
    x = linears[0].input
    producer = x.producer()
    if producer is not None and producer.metadata_props.get(ROTATION_MARK) == "online":
        return False
    n = int(constant_array(linears[0].weight).shape[0])
    f = rotation_factors(n, seed)
    m, p = f.a.shape[0], f.b.shape[0]
    dtype = constant_array(linears[0].weight).dtype
    split = new_initializer(graph, f"{tag}.rot.split", np.array([0, 0, m, p], np.int64))
    merge = new_initializer(graph, f"{tag}.rot.merge", np.array([0, 0, n], np.int64))
    b = new_initializer(graph, f"{tag}.rot.b", f.b.astype(dtype))
    at = new_initializer(graph, f"{tag}.rot.at", np.ascontiguousarray(f.a.T).astype(dtype))
    r1 = ir.node("Reshape", [x, split], name=f"{tag}.rot.reshape_in")
    r2 = ir.node("MatMul", [r1.outputs[0], b], name=f"{tag}.rot.matmul_b")
    r3 = ir.node("MatMul", [at, r2.outputs[0]], name=f"{tag}.rot.matmul_a")
    r4 = ir.node("Reshape", [r3.outputs[0], merge], name=f"{tag}.rot.reshape_out")
    for node in (r1, r2, r3, r4):
        node.metadata_props[ROTATION_MARK] = "online"
        node.metadata_props[f"{ROTATION_MARK}.factors"] = (
            f"{m}x{p}:{'hadamard' if f.hadamard else 'random'}"
        )
    r4.outputs[0].name = f"{tag}.rotated"
    graph.insert_before(linears[0].node, [r1, r2, r3, r4])
    if n >= FACTORED_MIN:
        rotate = f.transpose_times
    else:
        rt = f.dense.T.astype(np.float64)

        def rotate(w: np.ndarray) -> np.ndarray:
            return rt @ w

    for lin in linears:
        lin.node.replace_input_with(0, r4.outputs[0])
        lin.transform_weight(rotate, axis=1)
    return True


class OnlineRotationPass(ir.passes.InPlacePass):
    name = "online_rotation"

    def __init__(
        self,
        dims: ModelDims,
        sites: frozenset[Site] = LAYER_SITES,
        seed: int = 0,
        residual_fallback: bool = False,
    ) -> None:
        super().__init__()
        self.dims, self.sites, self.seed = dims, sites, seed
        self.residual_fallback = residual_fallback

    def requires(self, model: ir.Model) -> None:
        require_float_weights(model, self.name)

    def call(self, model: ir.Model) -> PassReport:
        mm = build_model_map(model, self.dims).require(fp_weights=True)
        graph, rotated, sites = model.graph, [], self.sites
        residual = model.metadata_props.get(RESIDUAL_ROTATION_MARK)
        if self.residual_fallback and residual is not None and "r1" not in residual:
            sites = sites | {Site.QKV, Site.GATE_UP}  # R1 was blocked, with or without R2
        for site, tag, linears in mm.site_groups():
            if site in sites and _rotate_input(graph, linears, tag, self.seed):
                rotated.append(tag)
        return PassReport(model, bool(rotated), {"rotated": rotated})
