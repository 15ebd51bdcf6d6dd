"""SmoothQuant smoothing, folded so that it costs nothing at run time.

Per input channel ``j`` of a MatMul input ``X``: ``s_j = max|X_j|^α / max|B_j,:|^(1-α)``
(``B = Wᵀ``, row ``j`` is input channel ``j``), and ``X := X diag(1/s)``, ``B := diag(s) B``.
Where the ``1/s`` goes:

- **norm-fed** inputs (q/k/v, gate/up, optionally lm_head): ``γ := γ / s``; one ``s`` for all
  MatMuls the norm feeds (the max of their rows);
- **o_proj** input: into v_proj's output columns (and bias). Attention is linear in V, so o's
  input channel ``h·D + d`` is v's channel ``g(h)·D + d`` for the KV head ``g(h)`` that query
  head ``h`` reads: ``s`` is tied across the query heads of each GQA group;
- **down_proj** input: into up_proj's output columns (SwiGLU is elementwise in the channel).

``max|X_j|`` comes from calibration of the graph as it is *before* this pass. The pass marks
the model (metadata ``smoothrot.smoothed``) and leaves a marked model unchanged, since applying
the same statistics twice would be wrong.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from smoothrot.core.manifest import ModelDims
from smoothrot.core.pass_infra import PassReport
from smoothrot.passes._conditions import require_float_weights
from smoothrot.passes._graph import constant_array, transform_constant
from smoothrot.passes.model_map import LAYER_SITES, Linear, Norm, Site, build_model_map

__all__ = ["SmoothConfig", "SmoothPass", "gqa_tied_scales", "smoothing_scales"]

_MARK = "smoothrot.smoothed"
AbsMax = Callable[[Linear], np.ndarray]  # per-channel max |x| at a Linear's input


@dataclass(frozen=True)
class SmoothConfig:
    alpha: float = 0.5
    sites: frozenset[Site] = LAYER_SITES

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if not all(isinstance(s, Site) for s in self.sites):
            raise ValueError(f"sites must be Site members, got {self.sites!r}")


def smoothing_scales(act_absmax: np.ndarray, weight_absmax: np.ndarray, alpha: float) -> np.ndarray:
    """``s = a^α / w^(1-α)``; channels with no signal keep ``s = 1``."""
    a = np.asarray(act_absmax, np.float64)
    w = np.asarray(weight_absmax, np.float64)
    s = np.ones_like(a)
    ok = (a > 0) & (w > 0)
    s[ok] = a[ok] ** alpha / w[ok] ** (1.0 - alpha)
    return np.clip(s, 1e-5, 1e5)


def _row_absmax(linears: list[Linear]) -> np.ndarray:
    return np.max([np.abs(constant_array(lin.weight)).max(axis=1) for lin in linears], axis=0)


def _scale_rows(lin: Linear, s: np.ndarray) -> None:
    lin.transform_weight(lambda w: s[:, None] * w)


def _scale_columns(lin: Linear, inv: np.ndarray) -> None:
    lin.transform_weight(lambda w: w * inv[None, :])
    lin.transform_bias(lambda b: b * inv)


def _smooth_norm(norm: Norm, linears: list[Linear], absmax: np.ndarray, alpha: float) -> None:
    s = smoothing_scales(absmax, _row_absmax(linears), alpha)
    transform_constant(norm.node, norm.gamma, lambda g: g / s)
    for lin in linears:
        _scale_rows(lin, s)


def gqa_tied_scales(
    act_absmax: np.ndarray, weight_absmax: np.ndarray, kv_heads: int, head_dim: int, alpha: float
) -> tuple[np.ndarray, np.ndarray]:
    """o_proj's ``s`` tied across the query heads that share a KV head: returns ``(s_v, s_o)``,
    ``s_v [kv_heads·D]`` for v_proj's output channels and ``s_o [heads·D]`` (``s_v`` repeated
    per query head) for o_proj's input rows. Inputs are per o-input-channel maxima."""
    a, w = np.asarray(act_absmax), np.asarray(weight_absmax)
    group = a.shape[0] // (kv_heads * head_dim)
    a, w = (v.reshape(kv_heads, group, head_dim).max(axis=1) for v in (a, w))
    s_v = smoothing_scales(a, w, alpha)
    return s_v.reshape(-1), np.repeat(s_v[:, None, :], group, axis=1).reshape(-1)


class SmoothPass(ir.passes.InPlacePass):
    """Fold SmoothQuant scales into norms, v_proj and up_proj (see module docstring)."""

    name = "smooth"

    def __init__(self, dims: ModelDims, absmax: AbsMax, config: SmoothConfig = SmoothConfig()):
        super().__init__()
        self.dims, self.absmax, self.config = dims, absmax, config

    def requires(self, model: ir.Model) -> None:
        require_float_weights(model, self.name)

    def call(self, model: ir.Model) -> PassReport:
        if model.metadata_props.get(_MARK) or not self.config.sites:
            return PassReport(model, False, {"sites": []})
        mm = build_model_map(model, self.dims).require(fp_weights=True)
        sites, alpha = self.config.sites, self.config.alpha
        for layer in mm.layers:
            if Site.QKV in sites:
                qkv = [layer.q, layer.k, layer.v]
                _smooth_norm(layer.attn_norm, qkv, self.absmax(layer.q), alpha)
            if Site.GATE_UP in sites:
                mlp = [layer.gate, layer.up]
                _smooth_norm(layer.mlp_norm, mlp, self.absmax(layer.gate), alpha)
            if Site.O_PROJ in sites:
                w_o = _row_absmax([layer.o])
                s_v, s_o = gqa_tied_scales(
                    self.absmax(layer.o), w_o, self.dims.kv_heads, self.dims.head_dim, alpha
                )
                _scale_columns(layer.v, 1.0 / s_v)
                _scale_rows(layer.o, s_o)
            if Site.DOWN_PROJ in sites:
                s = smoothing_scales(self.absmax(layer.down), _row_absmax([layer.down]), alpha)
                _scale_columns(layer.up, 1.0 / s)
                _scale_rows(layer.down, s)
        if Site.LM_HEAD in sites and mm.final_norm and mm.lm_head:
            _smooth_norm(mm.final_norm, [mm.lm_head], self.absmax(mm.lm_head), alpha)
        model.metadata_props[_MARK] = ",".join(sorted(s.value for s in sites))
        return PassReport(model, True, {"sites": sorted(s.value for s in sites), "alpha": alpha})
