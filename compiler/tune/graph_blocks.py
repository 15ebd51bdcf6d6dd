"""Cut a decoder graph into a prologue, one block per decoder layer, and a head.

Block ``i`` is every node on a path from layer ``i``'s input residual (the value its attention
RMSNorm reads) to its output residual (the next layer's attention-norm input, or the final norm's
input for the last layer): forward-reachable from the one *and* backward-reachable from the other,
in graph order, with the constant-only nodes that only it reads (its weights' INT4
``DequantizeLinear``, so that a scale override reaches the block). The boundaries come from the
structural model map, so this works on the float export and on every compiled graph (rotations,
smoothing, QDQ, INT4 weights) alike.

The *prologue* is what the blocks need that no block computes — the embedding, rotary cos/sin,
the attention masks — i.e. what runs once before block 0. A block may read only its own input
residual, constants, graph inputs and prologue values; anything else (a value produced inside
another block, or a prologue value that depends on one) raises ``ModelMapError`` naming it, since
such a graph cannot be run block by block. The *head* is what follows the last block (final norm,
lm_head). ``present.*`` K/V outputs are produced inside the blocks.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import onnx_ir as ir

from smoothrot.core.manifest import ModelDims
from smoothrot.passes.model_map import ModelMapError, build_model_map

__all__ = ["Block", "decoder_blocks", "head_nodes"]


@dataclass(frozen=True)
class Block:
    """Decoder layer ``index``: ``nodes`` compute the value ``output`` from the value ``input``."""

    index: int
    input: str
    output: str
    nodes: tuple[ir.Node, ...]


def _forward(value: ir.Value) -> dict[int, ir.Node]:
    """Every node that (transitively) reads ``value``."""
    seen: dict[int, ir.Node] = {}
    queue = deque([value])
    while queue:
        for node in queue.popleft().consumers():
            if id(node) not in seen:
                seen[id(node)] = node
                queue.extend(node.outputs)
    return seen


def _backward(values: list[ir.Value]) -> dict[int, ir.Node]:
    """Every node ``values`` (transitively) depend on."""
    seen: dict[int, ir.Node] = {}
    queue = deque(values)
    while queue:
        value = queue.popleft()
        node = value.producer()
        if node is None or id(node) in seen:
            continue
        seen[id(node)] = node
        queue.extend(v for v in node.inputs if v is not None)
    return seen


def _constant_nodes(model: ir.Model) -> set[int]:
    """Nodes computed from constants only (e.g. an INT4 weight's ``DequantizeLinear``)."""
    const: set[int] = set()

    def constant(v: ir.Value) -> bool:
        p = v.producer()
        if p is None:
            return v.const_value is not None and not v.is_graph_input()
        return id(p) in const

    for node in model.graph:
        if all(v is None or constant(v) for v in node.inputs):
            const.add(id(node))
    return const


def _adopt(nodes: dict[int, ir.Node], const: set[int]) -> None:
    """Add to ``nodes`` the constant-only nodes that only ``nodes`` read (a Linear's weight
    dequantization belongs to its block, so overriding its scale reaches the block)."""
    queue = deque(v for n in nodes.values() for v in n.inputs if v is not None)
    while queue:
        p = queue.popleft().producer()
        if p is None or id(p) in nodes or id(p) not in const:
            continue
        if all(id(c) in nodes for out in p.outputs for c in out.consumers()):
            nodes[id(p)] = p
            queue.extend(v for v in p.inputs if v is not None)


def _residuals(model: ir.Model, dims: ModelDims) -> list[ir.Value]:
    """The residual stream entering each layer, then the one entering the final norm."""
    mm = build_model_map(model, dims).require()
    assert mm.final_norm is not None
    return [layer.attn_norm.input for layer in mm.layers] + [mm.final_norm.input]


def _in_graph_order(model: ir.Model, nodes: dict[int, ir.Node]) -> list[ir.Node]:
    return [n for n in model.graph if id(n) in nodes]


def _external_reads(block: Block, owner: dict[int, int]) -> list[ir.Value]:
    """Values ``block`` reads that no block computes; raises on one another block computes."""
    reads = []
    for node in block.nodes:
        for v in node.inputs:
            producer = v.producer() if v is not None else None
            if v is None or producer is None or v.name == block.input:
                continue
            where = owner.get(id(producer))
            if where is None:
                reads.append(v)
            elif where != block.index:
                raise ModelMapError(
                    f"block {block.index} reads {v.name!r}, computed inside block {where}: the "
                    "graph cannot be run block by block"
                )
    return reads


def _prologue(
    model: ir.Model, blocks: list[Block], owner: dict[int, int], first: ir.Value
) -> list[ir.Node]:
    roots = [first] + [v for block in blocks for v in _external_reads(block, owner)]
    needed = _backward(roots)
    for node in needed.values():
        if id(node) in owner:
            value = next(v.name for v in node.outputs)
            raise ModelMapError(
                f"a value the blocks read before block {owner[id(node)]} depends on {value!r}, "
                f"computed inside block {owner[id(node)]}"
            )
    return _in_graph_order(model, needed)


def decoder_blocks(model: ir.Model, dims: ModelDims) -> tuple[list[ir.Node], list[Block]]:
    """``(prologue, blocks)`` of ``model``: run the prologue once, then block 0, 1, … in turn,
    each fed the previous block's output (see the module docstring)."""
    residuals = _residuals(model, dims)
    const = _constant_nodes(model)
    blocks = []
    for i, (start, end) in enumerate(zip(residuals, residuals[1:], strict=False)):
        reach = _forward(start)
        nodes = {k: n for k, n in _backward([end]).items() if k in reach}
        if not nodes:
            raise ModelMapError(f"no node computes {end.name!r} from {start.name!r} (layer {i})")
        _adopt(nodes, const)
        order = _in_graph_order(model, nodes)
        blocks.append(Block(i, start.name or "", end.name or "", tuple(order)))
    owner = {id(n): b.index for b in blocks for n in b.nodes}
    return _prologue(model, blocks, owner, residuals[0]), blocks


def head_nodes(model: ir.Model, dims: ModelDims) -> list[ir.Node]:
    """The nodes after the last block's output residual (final norm, lm_head), in graph order."""
    nodes = _forward(_residuals(model, dims)[-1])
    _adopt(nodes, _constant_nodes(model))
    return _in_graph_order(model, nodes)
