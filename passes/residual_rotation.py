"""Fused rotations (QuaRot R1 and R2): rotate the weights, insert nothing (exact, free at run time).

**R1 (residual stream)**, with every norm's γ folded (γ = 1; refused otherwise, because an
RMSNorm commutes with an orthogonal ``Q`` only without γ): the embedding table ``E := E Q``;
every MatMul that reads the residual through a norm (q/k/v, gate/up, lm_head) ``B := Qᵀ B``;
every MatMul that writes it (o_proj, down_proj) ``B := B Q`` (bias ``b := b Q``). The residual
stream then carries ``h Q`` everywhere and ``rms(h Q) = rms(h)``. lm_head has its own weight
after export, so it is untied from the embedding by construction.

**R2 (per head, v → o)**: v_proj's output columns of each KV head ``B_v := B_v (I ⊗ H_D)``
(and its bias); o_proj's input rows of each query head ``B_o := (I ⊗ H_Dᵀ) B_o``. Attention is
linear in V per head, so the heads' outputs arrive rotated by the same ``H_D``.

**Post-norms** (Gemma 3: a norm between o_proj / down_proj and the residual Add) block R1 where
their γ is not uniform: ``norm(o Q) ⊙ γ = (norm(o) Q) ⊙ γ ≠ (norm(o) ⊙ γ) Q``. There only R2 is
applied, the model is marked ``r2`` and the report names the norm that blocked R1;
``OnlineRotationPass(residual_fallback=True)`` then rotates the inputs R1 would have covered
(q/k/v, gate/up) online instead.

The model is marked (metadata ``smoothrot.residual_rotation``) and a marked model is left alone.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from smoothrot.core.hadamard import FACTORED_MIN, rotation_factors
from smoothrot.core.manifest import ModelDims
from smoothrot.core.pass_infra import PassPreconditionError, PassReport
from smoothrot.passes._conditions import require_float_weights
from smoothrot.passes._graph import constant_array, transform_constant
from smoothrot.passes.model_map import Linear, ModelMap, ModelMapError, build_model_map

__all__ = ["RESIDUAL_ROTATION_MARK", "ResidualRotationPass", "r1_blocker"]

_MARK = RESIDUAL_ROTATION_MARK = "smoothrot.residual_rotation"


def r1_blocker(mm: ModelMap) -> str | None:
    """Why the fused residual rotation cannot apply to ``mm``'s model (None where it can)."""
    for layer in mm.layers:
        for norm in layer.post_norms():
            gamma = constant_array(norm.gamma)
            if np.any(gamma != gamma.flat[0]):
                return (
                    f"layer {layer.index}'s post-norm (γ {norm.gamma.name!r}) is not uniform: "
                    "it does not commute with a rotation of the residual stream"
                )
    return None


class ResidualRotationPass(ir.passes.InPlacePass):
    name = "residual_rotation"

    def __init__(self, dims: ModelDims, per_head: bool = True, seed: int = 0) -> None:
        super().__init__()
        self.dims, self.per_head, self.seed = dims, per_head, seed

    def requires(self, model: ir.Model) -> None:
        require_float_weights(model, self.name)
        if model.metadata_props.get(_MARK):
            return  # already rotated: call() leaves it as it is
        mm = build_model_map(model, self.dims).require(fp_weights=True)
        if r1_blocker(mm) is not None:
            return  # only the per-head rotation applies, which needs no folded norms
        unfolded = [
            n.gamma.name for n, _ in mm.norm_consumers() if np.any(constant_array(n.gamma) != 1)
        ]
        if unfolded:
            raise PassPreconditionError(
                f"{self.name} needs folded norms (γ != 1 in {unfolded[0]}): run fold_norm_gamma "
                "first"
            )

    def call(self, model: ir.Model) -> PassReport:
        if model.metadata_props.get(_MARK):
            return PassReport(model, False, {"rotation": model.metadata_props[_MARK]})
        mm = build_model_map(model, self.dims).require(fp_weights=True)
        blocked = r1_blocker(mm)
        if blocked is not None:
            for layer in mm.layers if self.per_head else []:
                self._rotate_heads(layer.v, layer.o)
            model.metadata_props[_MARK] = "r2" if self.per_head else "none"
            details = {"rotation": model.metadata_props[_MARK], "r1_blocked": blocked}
            return PassReport(model, self.per_head, details)
        if mm.embedding is None or mm.lm_head is None:
            raise ModelMapError("residual rotation needs the embedding Gather and lm_head")
        f = rotation_factors(self.dims.hidden, self.seed)
        if self.dims.hidden >= FACTORED_MIN:
            times, transpose_times = f.times, f.transpose_times
        else:  # the dense products (a small model's reference bits)
            q = f.dense

            def times(w: np.ndarray) -> np.ndarray:
                return w @ q

            def transpose_times(w: np.ndarray) -> np.ndarray:
                return q.T @ w

        transform_constant(mm.embedding, mm.embedding.inputs[0], times, axis=0)
        for _, readers in mm.norm_consumers():
            for lin in readers:
                lin.transform_weight(transpose_times, axis=1)
        for layer in mm.layers:
            for writer in (layer.o, layer.down):
                writer.transform_weight(times, axis=0)
                writer.transform_bias(times)
            if self.per_head:
                self._rotate_heads(layer.v, layer.o)
        model.metadata_props[_MARK] = "r1+r2" if self.per_head else "r1"
        return PassReport(model, True, {"rotation": model.metadata_props[_MARK]})

    def _rotate_heads(self, v: Linear, o: Linear) -> None:
        d = self.dims
        h = rotation_factors(d.head_dim, self.seed).dense
        v_rot = np.kron(np.eye(d.kv_heads), h)
        o_rot = np.kron(np.eye(d.heads), h)
        v.transform_weight(lambda w: w @ v_rot)
        v.transform_bias(lambda b: b @ v_rot)
        o.transform_weight(lambda w: o_rot.T @ w)
