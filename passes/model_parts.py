"""The parts of a decoder that the model map recognizes: norms, constant-weight linears, layers.

Kept apart from the recognition itself (:mod:`smoothrot.passes.model_map`) so a pass that only
rewrites a ``Linear`` or a ``Norm`` reads these types without the matching machinery.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import onnx_ir as ir

from smoothrot.passes._graph import producer_op, transform_constant

__all__ = ["LAYER_SITES", "DecoderLayer", "Linear", "ModelMapError", "Norm", "Site"]


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
    # Gemma 3's norms between o_proj / down_proj and the residual Add, if any
    post_attn_norm: Norm | None = None
    post_mlp_norm: Norm | None = None
    # Qwen3's and Gemma 3's per-head norms of the q and k projections, if any
    q_norm: Norm | None = None
    k_norm: Norm | None = None

    def linears(self) -> list[Linear]:
        return [self.q, self.k, self.v, self.o, self.gate, self.up, self.down]

    def post_norms(self) -> list[Norm]:
        return [n for n in (self.post_attn_norm, self.post_mlp_norm) if n is not None]
