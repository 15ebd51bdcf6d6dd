"""Lower INT4 QDQ MatMuls to ONNX Runtime's ``MatMulNBits`` (domain ``com.microsoft``).

Input pattern (what ``WeightQuantPass`` writes): ``MatMul(X, DequantizeLinear(q, scale))`` with
``q`` an INT4 constant ``[K, N]``, ``scale`` a float32 constant, no zero point, ``axis`` 0 or 1.
Any other MatMul reading an INT4 ``DequantizeLinear`` is reported by name in ``skipped`` and left
as QDQ; nothing is guessed.

``MatMulNBits(A, W, scales; K, N, bits=4, block_size=bs, accuracy_level)`` computes ``A · Wᵀ``
with ``W [N, K]`` stored as 4-bit nibbles, two per byte (the lower ``k`` in the low nibble), and
the implicit zero point 8 of an absent ``zero_points`` input: ``nibble = q + 8`` and
``W[n, k] = (nibble − 8) · scales[n, k // bs]``; ``bs`` is a power of two in [16, 256], and ``K``
is padded to whole blocks with ``q = 0``.

- **per-OC** (axis 0, groups of ``g`` along K), one node, the same values; two kernels, chosen
  by ``per_oc`` (``PerOcKernel``):

  - ``matmulnbits``: ``bs`` is the largest power of two ≤ 256 that divides ``g`` and each
    group's scale is repeated ``g / bs`` times;
  - ``ortops``: one ``smoothrot.ort::MatMulInt4PerOC`` node (our op, the per-IC op's kernels
    with MatMulNBits' grouping) where ``g`` is a multiple of 64, MatMulNBits otherwise.
- **per-IC** (axis 1, groups of ``g`` along N), which MatMulNBits cannot express (its scales
  vary along K only per block). Two kernels, chosen by ``per_ic`` (``PerIcKernel``):

  - ``ortops`` (default): one ``smoothrot.ort::MatMulInt4PerIC`` node, our ONNX Runtime
    custom op (``ortops/``; the session must register its library, which the runner does).
  - ``split`` (standard ORT ops only): ``Y[..., cols_j] = (X ⊙ scale[:, j]) · q[:, cols_j]``
    for each of the ``N / g`` column groups ``j``: one ``Mul`` by the group's per-row scale
    vector and one MatMulNBits with unit scales per group, one ``Concat`` joining them. It is
    portable but slow: ``2·N/g + 1`` nodes per layer, each with its own dispatch.

  Both compute the same sum rounded in a different order (``(x·s)·q`` instead of ``x·(q·s)``).
- ``accuracy_level`` is written on every node: 0 computes in fp32 (the QDQ graph's meaning); 4
  quantizes ``A`` to int8 per block of ``bs`` inside the kernel (faster on CPUs, lossy — the
  compiler reports perplexity at the level it ships).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx_ir as ir

from smoothrot.core.int4 import Grouping
from smoothrot.core.pass_infra import PassReport
from smoothrot.ortops.spec import DOMAIN as ORTOPS_DOMAIN
from smoothrot.ortops.spec import OP_TYPE_PER_IC as PER_IC_OP
from smoothrot.ortops.spec import OP_TYPE_PER_OC as PER_OC_OP
from smoothrot.ortops.spec import pack_per_ic
from smoothrot.passes._conditions import require_float32
from smoothrot.passes._graph import new_initializer, remove_if_dead
from smoothrot.passes.rules.int4_matmul import Int4MatMul, int4_matmuls

__all__ = [
    "LOWERED_MARK",
    "MS_DOMAIN",
    "KERNEL_OPS",
    "LowerToMatMulNBitsPass",
    "LoweredLayer",
    "PerIcKernel",
    "PerOcKernel",
    "matmulnbits_block",
    "pack_matmulnbits",
]

MS_DOMAIN = "com.microsoft"
LOWERED_MARK = "smoothrot.lowered"  # node metadata: "<grouping>:<group>:<bs>"
UNIT_SCALE_BLOCK = 128  # per-IC groups: unit scales, so the block only sets A's int8 blocks
KERNEL_OPS = ("MatMulNBits", PER_IC_OP, PER_OC_OP)  # the node types that read INT4 weights
ORTOPS_MIN_PER_OC_GROUP = 64  # our per-OC op's int8 kernel works on whole 64-k pairs


class PerIcKernel(enum.StrEnum):
    ORTOPS = "ortops"  # one smoothrot.ort::MatMulInt4PerIC node per layer (our custom op)
    SPLIT = "split"  # Mul + unit-scale MatMulNBits per column group, then Concat


class PerOcKernel(enum.StrEnum):
    MATMULNBITS = "matmulnbits"  # ONNX Runtime's own com.microsoft::MatMulNBits
    ORTOPS = "ortops"  # smoothrot.ort::MatMulInt4PerOC (groups that are multiples of 64)


def matmulnbits_block(length: int, cap: int = 256) -> int:
    """The largest power of two in [16, ``cap``] that divides ``length`` (0 if none does)."""
    bs = cap
    while bs >= 16 and length % bs:
        bs //= 2
    return bs if bs >= 16 else 0


def pack_matmulnbits(q: np.ndarray, block: int) -> np.ndarray:
    """``q [K, N]`` (ints in [-8, 7]) → MatMulNBits' ``uint8 [N, ceil(K/block), block/2]``."""
    k, n = q.shape
    if q.min(initial=0) < -8 or q.max(initial=0) > 7:
        raise ValueError("INT4 values must lie in [-8, 7]")
    blocks = -(-k // block)
    nibbles = np.full((n, blocks * block), 8, np.uint8)  # padding: nibble 8 = value 0
    nibbles[:, :k] = (q.T.astype(np.int16) + 8).astype(np.uint8)
    pairs = nibbles.reshape(n, blocks, block // 2, 2)
    return (pairs[..., 0] | (pairs[..., 1] << 4)).astype(np.uint8)


@dataclass(frozen=True)
class LoweredLayer:
    weight: str  # the dequantized weight's name (the layer's weight name in the manifest)
    grouping: Grouping
    group: int
    block_size: int  # MatMulNBits block_size (0 for our ops: no MatMulNBits blocks)
    nodes: int  # kernel nodes (KERNEL_OPS) emitted for this layer


def _matmulnbits(
    graph: ir.Graph, a: ir.Value, q: np.ndarray, scales: np.ndarray, bs: int, level: int, tag: str
) -> ir.Node:
    k, n = q.shape
    packed = new_initializer(graph, f"{tag}.nbits", pack_matmulnbits(q, bs))
    s = new_initializer(graph, f"{tag}.nbits_scale", np.ascontiguousarray(scales, np.float32))
    attrs = {"K": k, "N": n, "bits": 4, "block_size": bs, "accuracy_level": level}
    return ir.node("MatMulNBits", [a, packed, s], attributes=attrs, domain=MS_DOMAIN, name=tag)


def _lower_per_oc(graph, x, q, scale, group, level, tag) -> tuple[list[ir.Node], int]:
    bs = matmulnbits_block(group)
    if not bs:
        raise ValueError(f"group {group} has no power-of-two block in [16, 256]")
    scales = np.repeat(scale, group // bs, axis=0).T  # [K/g, N] → [N, K/bs]
    return [_matmulnbits(graph, x, q, scales, bs, level, tag)], bs


def _ortops_node(graph, op_type: str, x, q, scales, group, level, tag) -> ir.Node:
    k, n = q.shape
    packed = new_initializer(graph, f"{tag}.int4_rows", pack_per_ic(q))
    s = new_initializer(graph, f"{tag}.int4_scale", np.ascontiguousarray(scales, np.float32))
    attrs = {"K": k, "N": n, "group": group, "accuracy_level": level}
    return ir.node(op_type, [x, packed, s], attributes=attrs, domain=ORTOPS_DOMAIN, name=tag)


def _lower_per_ic_op(graph, x, q, scale, group, level, tag) -> tuple[list[ir.Node], int]:
    return [_ortops_node(graph, PER_IC_OP, x, q, scale.T, group, level, tag)], 0


def _lower_per_oc_op(graph, x, q, scale, group, level, tag) -> tuple[list[ir.Node], int]:
    if group % ORTOPS_MIN_PER_OC_GROUP:
        return _lower_per_oc(graph, x, q, scale, group, level, tag)
    return [_ortops_node(graph, PER_OC_OP, x, q, scale.T, group, level, tag)], 0


def _lower_per_ic_split(graph, x, q, scale, group, level, tag) -> tuple[list[ir.Node], int]:
    k, n = q.shape
    bs = matmulnbits_block(k, UNIT_SCALE_BLOCK) or UNIT_SCALE_BLOCK
    ones = np.ones((group, -(-k // bs)), np.float32)
    nodes: list[ir.Node] = []
    outputs = []
    for j in range(n // group):
        s_j = new_initializer(graph, f"{tag}.g{j}.prescale", np.ascontiguousarray(scale[:, j]))
        mul = ir.node("Mul", [x, s_j], name=f"{tag}.g{j}.prescale")
        cols = q[:, j * group : (j + 1) * group]
        mm = _matmulnbits(graph, mul.outputs[0], cols, ones, bs, level, f"{tag}.g{j}")
        nodes += [mul, mm]
        outputs.append(mm.outputs[0])
    nodes.append(ir.node("Concat", outputs, attributes={"axis": -1}, name=f"{tag}.concat"))
    return nodes, bs


@dataclass(frozen=True)
class LowerToMatMulNBitsPass(ir.passes.InPlacePass):
    """Every ``MatMul(X, INT4 DequantizeLinear)`` → MatMulNBits or our op (module docstring).

    ``details``: ``lowered`` (a :class:`LoweredLayer` each), ``skipped`` (MatMul name → why it
    stays QDQ)."""

    name: ClassVar[str] = "lower_int4"
    accuracy_level: int = 0
    per_ic: PerIcKernel = PerIcKernel.ORTOPS
    per_oc: PerOcKernel = PerOcKernel.MATMULNBITS

    def __post_init__(self) -> None:
        super().__init__()
        if self.accuracy_level not in (0, 1, 2, 3, 4):
            raise ValueError(f"accuracy level must be 0..4, got {self.accuracy_level}")

    def requires(self, model: ir.Model) -> None:
        require_float32(model, self.name)

    def call(self, model: ir.Model) -> PassReport:
        graph = model.graph
        lowered: list[LoweredLayer] = []
        skipped: dict[str, str] = {}
        for found in int4_matmuls(model, skipped):
            try:
                lowered.append(self._lower(graph, found))
            except ValueError as exc:
                skipped[found.name] = str(exc)
        ops = {node.op_type for node in graph}
        if "MatMulNBits" in ops:
            model.opset_imports.setdefault(MS_DOMAIN, 1)
        if ops & {PER_IC_OP, PER_OC_OP}:
            model.opset_imports.setdefault(ORTOPS_DOMAIN, 1)
        return PassReport(model, bool(lowered), {"lowered": lowered, "skipped": skipped})

    def _lower(self, graph: ir.Graph, m: Int4MatMul) -> LoweredLayer:
        """Rewrite one layer (ValueError, graph unchanged, if its kernel cannot take it)."""
        weight = m.dq.outputs[0]
        tag = weight.name or m.matmul.name or "linear"
        per_ic = _lower_per_ic_op if self.per_ic is PerIcKernel.ORTOPS else _lower_per_ic_split
        per_oc = _lower_per_oc_op if self.per_oc is PerOcKernel.ORTOPS else _lower_per_oc
        lower = per_oc if m.axis == 0 else per_ic
        nodes, bs = lower(
            graph, m.matmul.inputs[0], m.q, m.scale, m.group, self.accuracy_level, tag
        )
        grouping = Grouping.PER_OC if m.axis == 0 else Grouping.PER_IC
        for node in nodes:
            node.metadata_props[LOWERED_MARK] = f"{grouping}:{m.group}:{bs}"
        ir.convenience.replace_nodes_and_values(
            graph, m.matmul, [m.matmul], nodes, [m.matmul.outputs[0]], [nodes[-1].outputs[0]]
        )
        remove_if_dead(graph, m.dq)
        count = sum(n.op_type in KERNEL_OPS for n in nodes)
        return LoweredLayer(tag, grouping, m.group, bs, count)
