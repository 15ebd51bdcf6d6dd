"""Run one onnxscript rule at one node, keeping its ``MatchResult`` (what matched, or why not).

``RewriteRuleSet.apply_to_model`` is onnxscript's driver, and the passes do not use it: it runs
constant propagation over the whole graph first, merges the matched nodes' metadata into the new
ones and tags them with the rule's name, renames values through ``NameFixPass`` afterwards, and
returns only a count. Each would change the graphs the passes write (metadata, value names), and
the passes must report every candidate they leave alone by name, with the reason. So a pass picks
its candidates and calls :func:`match_at` or :func:`rewrite_at` on each:

- :func:`match_at` runs the rule's matcher and ``check`` rooted at the node (onnxscript patterns
  are rooted at their output node) and returns the ``MatchResult``; a failed one carries the
  check's ``fail(reason)`` or the matcher's own, taken from a ``MatchingTracer``;
- :func:`rewrite_at` also builds the rule's replacement and splices it in, exactly as
  ``RewriteRuleSet`` does (``replace_nodes_and_values`` after the root node, the matched nodes
  removed); the replacement's initializers keep their names unless taken (then ``.1``, ``.2``,
  …), the nodes keep the names and metadata the rule gave them, and the initializers only the
  matched nodes read are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir
from onnxscript.rewriter import pattern

from smoothrot.passes._graph import drop_dead_initializers

__all__ = ["Outcome", "match_at", "rewrite_at"]


@dataclass(frozen=True)
class Outcome:
    """What one rule did at one node: its ``MatchResult`` and the nodes it wrote (none if it
    failed, when ``match.reason`` says why)."""

    match: pattern.MatchResult
    nodes: tuple[ir.Node, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.match)

    @property
    def reason(self) -> str:
        return self.match.reason


def _graph(node: ir.Node) -> ir.Graph:
    graph = node.graph
    if graph is None:
        raise ValueError(f"node {node.name!r} is not in a graph")
    return graph


def _failure(
    tracer: pattern.MatchingTracer, node: ir.Node, mismatch: str | None = None
) -> pattern.MatchResult:
    """The failed match the tracer logged for ``node``; ``mismatch`` (or a generic reason) where
    the pattern's structure did not match (the tracer logs those only once a node was bound)."""
    for infos in tracer.best_matches_map.values():
        for info in infos:
            structural = info.status == pattern.MatchStatus.NO_MATCH
            if info.root_node is node and not (structural and mismatch):
                return info.match_result
    reason = mismatch or f"{node.op_type} node {node.name!r} is not the pattern's output node"
    return pattern.MatchResult().fail(reason, node)


def match_at(
    rule: pattern.PatternBase | pattern.Pattern,
    model: ir.Model,
    node: ir.Node,
    *,
    removable: bool = True,
    mismatch: str | None = None,
) -> pattern.MatchResult:
    """``rule``'s pattern and check at the subgraph whose output node is ``node``. With
    ``removable``, the matched nodes other than ``node`` must have no reader outside the match;
    ``mismatch`` is the reason given when the structure differs (else the matcher's own)."""
    tracer = pattern.MatchingTracer()
    found = rule.match(
        model, _graph(node), node, check_nodes_are_removable=removable, tracer=tracer
    )
    return found if found else _failure(tracer, node, mismatch)


def _register(graph: ir.Graph, value: ir.Value) -> None:
    base = value.name or "constant"
    name, i = base, 0
    while name in graph.initializers:
        i += 1
        name = f"{base}.{i}"
    value.name = name
    if value.const_value is not None:
        value.const_value.name = name
    graph.register_initializer(value)


def rewrite_at(rule: pattern.RewriteRule, model: ir.Model, node: ir.Node) -> Outcome:
    """Match ``rule`` at ``node`` and, if it matches, replace the matched nodes by the rule's
    replacement (see the module docstring); the graph is unchanged when it does not."""
    graph = _graph(node)
    tracer = pattern.MatchingTracer()
    delta = rule.try_rewrite(model, graph, node, tracer=tracer)
    if delta is None:
        return Outcome(_failure(tracer, node))
    match = delta.match
    for value in delta.new_initializers:
        _register(graph, value)
    inputs = [v for old in match.nodes for v in old.inputs]  # removing the nodes detaches them
    ir.convenience.replace_nodes_and_values(
        graph, node, match.nodes, delta.new_nodes, match.outputs, delta.new_outputs
    )
    drop_dead_initializers(graph, inputs)
    return Outcome(match, tuple(delta.new_nodes))
