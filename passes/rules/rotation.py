"""The online rotation ``y = x · (A ⊗ B)``: one pattern, two lowerings.

``OnlineRotationPass`` writes it as four standard nodes, each marked ``smoothrot.rotation =
online``::

    Reshape(x, [0, 0, m, p]) → MatMul(·, B) → MatMul(Aᵀ, ·) → Reshape(·, [0, 0, m·p])

:class:`OnlineRotation` is that pattern with the checks both lowerings need (every node marked,
shapes and factors constants, square factors, the reshapes spelling ``m`` and ``p``); each
lowering is a subclass that adds its own check and writes its node:

- :class:`KroneckerRotation` (ONNX Runtime): float32 ``x`` and ``B = H_p/√p`` (the Sylvester
  matrix our op transforms with a fast Walsh–Hadamard) → ``smoothrot.ort::KroneckerRotation(x,
  A)``, which keeps the rotation's metadata;
- :class:`KronHadamard` (TensorRT): factor sizes the plugin takes (``HadamardAttrs``) →
  ``smoothrot::kron_hadamard(x, A, B)`` with its attributes and the online-rotation mark.

Both are named after the rotation (``<tag>.rot.reshape_in`` → ``<tag>.rot``); the four nodes'
constants go once nothing else reads them. The lowerings report each rotation by its *first*
node, while an onnxscript pattern is matched from its *output* node: :func:`lower_rotation` walks
from the first Reshape to the last along the only reader of each output (``expected only a
MatMul to read the output of …`` where there is another reader) and applies the rule there.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from smoothrot.core.hadamard import hadamard
from smoothrot.ortops.spec import DOMAIN as ORTOPS_DOMAIN
from smoothrot.ortops.spec import OP_TYPE_ROTATION
from smoothrot.passes._graph import ROTATION_MARK, constant_array, is_constant
from smoothrot.passes.rules._apply import Outcome, rewrite_at
from smoothrot.plugins.trt_spec import NAMESPACE, HadamardAttrs, PluginOp

__all__ = [
    "KronHadamard",
    "KroneckerRotation",
    "OnlineRotation",
    "is_rotation_start",
    "lower_rotation",
    "rotation_tag",
]

_ONLINE = "online"
_CHAIN = (("MatMul", 0), ("MatMul", 1), ("Reshape", 0))  # each node's reader and its input index


def _marked(node: ir.Node | None) -> bool:
    return node is not None and node.metadata_props.get(ROTATION_MARK) == _ONLINE


def is_rotation_start(node: ir.Node) -> bool:
    """A marked Reshape that is not the last node of a rotation (whose input a marked MatMul
    produces)."""
    if node.op_type != "Reshape" or not _marked(node):
        return False
    producer = node.inputs[0].producer() if node.inputs[0] is not None else None
    return not (producer is not None and producer.op_type == "MatMul" and _marked(producer))


def rotation_tag(first: ir.Node) -> str:
    """The rotation's name: its first node's, without ``.reshape_in``."""
    return (first.name or "rotation").removesuffix(".reshape_in")


def _factors(at: ir.Value, b: ir.Value) -> tuple[np.ndarray, np.ndarray]:
    """``(A, B)`` as float32 (``A`` from the stored ``Aᵀ``)."""
    a = np.ascontiguousarray(constant_array(at).astype(np.float64).T, np.float32)
    return a, np.asarray(constant_array(b), np.float32)


class OnlineRotation(pattern.RewriteRuleClassBase):
    """The four-node rotation and the checks every lowering shares; subclasses lower it."""

    def pattern(self, op, x, split, b, at, merge):
        blocks = op.Reshape(x, split, _outputs=["blocks"])
        return op.Reshape(op.MatMul(at, op.MatMul(blocks, b)), merge)

    def check(self, context, split, b, at, merge, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        if not all(_marked(node) for node in context.nodes):
            return result.fail("not every node carries the online-rotation mark")
        if not all(is_constant(v) for v in (split, b, at, merge)):
            return result.fail("shapes or factors are not constants")
        b_arr, at_arr = constant_array(b), constant_array(at)
        m = at_arr.shape[0] if at_arr.ndim == 2 else 0
        p = b_arr.shape[0] if b_arr.ndim == 2 else 0
        if (
            at_arr.shape != (m, m)
            or b_arr.shape != (p, p)
            or constant_array(split).tolist() != [0, 0, m, p]
            or constant_array(merge).tolist() != [0, 0, m * p]
        ):
            return result.fail("reshapes are not [0, 0, m, p] / [0, 0, m·p] around square factors")
        return result


class KroneckerRotation(OnlineRotation):
    """ONNX Runtime: → ``smoothrot.ort::KroneckerRotation(x, A)``."""

    def check(self, context, x: ir.Value, b: ir.Value, **bindings) -> pattern.MatchResult:
        result = super().check(context, x=x, b=b, **bindings)
        if not result:
            return result
        if x.dtype != ir.DataType.FLOAT:
            return result.fail("input is not float32", x)
        b_arr = constant_array(b).astype(np.float64)
        p = b_arr.shape[0]
        h = hadamard(p) if p and p & (p - 1) == 0 else None
        if h is None or not np.allclose(b_arr, h / np.sqrt(p), rtol=0, atol=1e-7):
            return result.fail("B is not a normalized Sylvester Hadamard matrix", b)
        return result

    def rewrite(self, op, x: ir.Value, b: ir.Value, at: ir.Value, blocks: ir.Value, **_):
        first = blocks.producer()
        assert first is not None
        tag = rotation_tag(first)
        a, _ = _factors(at, b)
        factor = op.initializer(ir.tensor(a, name=f"{tag}.a"))
        y = op.op(OP_TYPE_ROTATION, x, factor, _domain=ORTOPS_DOMAIN, _name=tag)
        y.producer().metadata_props.update(first.metadata_props)  # the rotation's marks
        return y


class KronHadamard(OnlineRotation):
    """TensorRT: → ``smoothrot::kron_hadamard(x, A, B)`` (AOT plugin node)."""

    def check(self, context, b: ir.Value, at: ir.Value, **bindings) -> pattern.MatchResult:
        result = super().check(context, b=b, at=at, **bindings)
        if not result:
            return result
        try:
            HadamardAttrs(constant_array(at).shape[0], constant_array(b).shape[0])
        except ValueError as exc:
            return result.fail(str(exc))
        return result

    def rewrite(self, op, x: ir.Value, b: ir.Value, at: ir.Value, blocks: ir.Value, **_):
        first = blocks.producer()
        assert first is not None
        name = rotation_tag(first)
        a, b_arr = _factors(at, b)
        attrs = HadamardAttrs(a.shape[0], b_arr.shape[0]).onnx_attributes()
        factors = [op.initializer(ir.tensor(a, name=f"{name}.a"))]
        factors.append(op.initializer(ir.tensor(b_arr, name=f"{name}.b")))
        y = op.op(
            PluginOp.KRON_HADAMARD.value,
            x,
            *factors,
            _domain=NAMESPACE,
            _name=name,
            plugin_namespace=NAMESPACE,
            aot=1,
            **attrs,
        )
        y.producer().metadata_props[ROTATION_MARK] = _ONLINE
        return y


def _last_node(first: ir.Node) -> tuple[ir.Node, pattern.MatchResult]:
    """The rotation's output node, found from ``first`` along the only reader of each output."""
    node, result = first, pattern.MatchResult()
    for op_type, index in _CHAIN:
        value = node.outputs[0]
        uses = list(value.uses())
        if (
            len(uses) != 1
            or value.is_graph_output()
            or uses[0].node.op_type != op_type
            or uses[0].idx != index
        ):
            reason = f"expected only a {op_type} to read the output of {node.name!r}"
            return node, result.fail(reason, value)
        node = uses[0].node
    return node, result


def lower_rotation(rule: pattern.RewriteRule, model: ir.Model, first: ir.Node) -> Outcome:
    """Apply ``rule`` (a lowering of :class:`OnlineRotation`) to the rotation whose first node is
    ``first``; the graph is unchanged when it fails, and the outcome says why."""
    last, walked = _last_node(first)
    return rewrite_at(rule, model, last) if walked else Outcome(walked)
