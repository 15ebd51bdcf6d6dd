"""Recipes: which exact transform and which quantization each ``--recipe`` runs, in one table.

A recipe = an exact transform (``Transform``) + what it quantizes (weights to INT4, activations
per token to INT8/INT4, the KV cache per head·token to INT4). Users may override the transform
and the weight options; the table gives the defaults, chosen by measurement (README, "Quality").
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from smoothrot.core.qdq import QuantBits
from smoothrot.passes.model_map import LAYER_SITES, Site

__all__ = ["Recipe", "RecipeSpec", "Transform", "TRANSFORM_SMOOTH_SITES"]


class Transform(enum.Enum):
    """The exact (float-preserving) stage before quantization."""

    NONE = "none"
    SMOOTH = "smooth"  # SmoothQuant at every layer input, folded into norms / v_proj / up_proj
    ROTATE = "rotate"  # fused R1 + per-head R2 + online Hadamard at down_proj
    HYBRID = "hybrid"  # smoothing first, then ROTATE; smoothed where the rotation is free
    HYBRID_ONLINE = "hybrid-online"  # smoothing then an online rotation at every layer input

    @property
    def smooths(self) -> bool:
        return self in (Transform.SMOOTH, Transform.HYBRID, Transform.HYBRID_ONLINE)


# Where each transform smooths. HYBRID smooths only where a rotation follows at no run-time cost:
# o_proj (R2 is fused into v/o) and down_proj (its online rotation exists in ROTATE anyway).
TRANSFORM_SMOOTH_SITES: dict[Transform, frozenset[Site]] = {
    Transform.SMOOTH: LAYER_SITES,
    Transform.HYBRID: frozenset({Site.O_PROJ, Site.DOWN_PROJ}),
    Transform.HYBRID_ONLINE: LAYER_SITES,
}


@dataclass(frozen=True)
class RecipeSpec:
    transform: Transform
    weights: bool  # INT4 weights
    act_bits: QuantBits | None
    kv_bits: QuantBits | None


class Recipe(enum.Enum):
    FP_SMOOTH = "fp-smooth"
    FP_ROTATE = "fp-rotate"
    FP_HYBRID = "fp-hybrid"
    W4A16 = "w4a16"
    W4A8 = "w4a8"
    W4A4 = "w4a4"
    W4A4KV4 = "w4a4kv4"

    @property
    def spec(self) -> RecipeSpec:
        return _SPECS[self]

    @property
    def exact(self) -> bool:
        s = self.spec
        return not s.weights and s.act_bits is None and s.kv_bits is None


_SPECS: dict[Recipe, RecipeSpec] = {
    Recipe.FP_SMOOTH: RecipeSpec(Transform.SMOOTH, False, None, None),
    Recipe.FP_ROTATE: RecipeSpec(Transform.ROTATE, False, None, None),
    Recipe.FP_HYBRID: RecipeSpec(Transform.HYBRID_ONLINE, False, None, None),
    Recipe.W4A16: RecipeSpec(Transform.ROTATE, True, None, None),
    Recipe.W4A8: RecipeSpec(Transform.ROTATE, True, QuantBits.INT8, None),
    # W4A4: smoothing then an online rotation at every input (hybrid-online) gave perplexity
    # 21.6 against 32.3 for the fused hybrid (README, "Quality"); the rotation nodes cost run time.
    Recipe.W4A4: RecipeSpec(Transform.HYBRID_ONLINE, True, QuantBits.INT4, None),
    Recipe.W4A4KV4: RecipeSpec(Transform.HYBRID_ONLINE, True, QuantBits.INT4, QuantBits.INT4),
}
