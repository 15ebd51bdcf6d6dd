"""Run an ``onnx_ir`` graph (or any node list of it) with torch ops, differentiably.

``compile --tune`` reconstructs each decoder block of the *quantized* graph against the float one
and needs gradients with respect to constants the graph already has (INT4 group scales, norm γ).
Rather than rebuilding the model in torch — a second implementation that could drift from the
graph — ``TorchGraph`` interprets the graph's own nodes: whatever the passes wrote (rotations,
smoothing, activation and KV quantizers, INT4 ``DequantizeLinear``) is what runs.

- Values are looked up by name: ``overrides`` first (e.g. a ``torch.nn.Parameter`` replacing an
  initializer), then the values produced so far, then ``env`` (graph inputs, or values a previous
  run produced), then the constants (initializers and ``Constant`` nodes, converted on first use
  and cached; a constant whose data is replaced in the graph is converted again).
- Dtypes are kept as the graph has them (INT4 / UINT4 constants widen to int8 / uint8); the
  quantized graphs smoothrot tunes are float32.
- ``QuantizeLinear`` stays in float with a straight-through round, so gradients pass the
  quantizers (see ``compiler/tune/torch_ops.py`` for the op table and its semantics).

The results match ONNX Runtime to float32 rounding (MatMul summation order, exp / sigmoid
approximations); a quantizer whose input lands within that rounding of a ``.5`` boundary may
round the other way.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping, Sequence

import numpy as np
import onnx_ir as ir
import torch

from smoothrot.compiler.tune.torch_ops import OPS, TORCH_DTYPES, OpContext
from smoothrot.core.manifest import Manifest

__all__ = ["TorchGraph", "torch_feeds"]

_NARROW = {ir.DataType.INT4: np.int8, ir.DataType.UINT4: np.uint8}
_MIN_OPSET = 13  # the op table implements opset >= 13 semantics (axes as inputs, Softmax axis)


def torch_feeds(manifest: Manifest, ids: np.ndarray) -> dict[str, torch.Tensor]:
    """The decoder graph's inputs for token ids ``[B, S]`` with an empty past (a prefill), as
    ``OrtDecoder.forward`` builds them."""
    batch, seq = ids.shape
    d = manifest.dims
    env = {
        "input_ids": torch.from_numpy(np.asarray(ids, np.int64)),
        "attention_mask": torch.ones((batch, seq), dtype=torch.int64),
        "position_ids": torch.arange(seq, dtype=torch.int64).expand(batch, seq).clone(),
    }
    for name in manifest.past_names:
        env[name] = torch.zeros((batch, d.kv_heads, 0, d.head_dim), dtype=torch.float32)
    return env


def _to_torch(tensor: ir.TensorProtocol) -> torch.Tensor:
    """A constant as a torch tensor of the same dtype (INT4 / UINT4 widened to int8 / uint8)."""
    dtype = tensor.dtype
    array = tensor.numpy()
    if dtype in _NARROW:
        array = array.astype(_NARROW[dtype])
    elif dtype == ir.DataType.BFLOAT16:
        return torch.from_numpy(array.astype(np.float32)).to(torch.bfloat16)
    elif dtype not in TORCH_DTYPES:
        raise NotImplementedError(f"constant {tensor.name!r} has dtype {dtype.name}")
    return torch.from_numpy(np.array(array, copy=True, order="C"))


def _constant_node_tensor(node: ir.Node) -> torch.Tensor:
    """The value of a ``Constant`` node."""
    attrs = node.attributes
    if "value" in attrs:
        return _to_torch(attrs["value"].as_tensor())
    scalars = {
        "value_float": lambda a: torch.tensor(a.as_float(), dtype=torch.float32),
        "value_floats": lambda a: torch.tensor(list(a.as_floats()), dtype=torch.float32),
        "value_int": lambda a: torch.tensor(a.as_int(), dtype=torch.int64),
        "value_ints": lambda a: torch.tensor(list(a.as_ints()), dtype=torch.int64),
    }
    for name, make in scalars.items():
        if name in attrs:
            return make(attrs[name])
    raise NotImplementedError(f"Constant node {node.name!r} has an unsupported attribute")


def _topological(graph: ir.Graph) -> list[ir.Node]:
    """The graph's nodes in graph order if that is topological (as ONNX requires), else sorted."""
    nodes = list(graph)
    position = {id(n): i for i, n in enumerate(nodes)}

    def ready(i: int, node: ir.Node) -> bool:
        return all(
            (p := v.producer()) is None or position.get(id(p), -1) < i
            for v in node.inputs
            if v is not None
        )

    if all(ready(i, n) for i, n in enumerate(nodes)):
        return nodes
    waiting = {id(n): 0 for n in nodes}
    for node in nodes:
        producers = {id(p) for v in node.inputs if v is not None and (p := v.producer())}
        waiting[id(node)] = len(producers & waiting.keys())
    order, queue = [], [n for n in nodes if waiting[id(n)] == 0]
    while queue:
        node = queue.pop(0)
        order.append(node)
        for user in {id(u): u for v in node.outputs for u in v.consumers()}.values():
            if id(user) in waiting:
                waiting[id(user)] -= 1
                if waiting[id(user)] == 0:
                    queue.append(user)
    if len(order) != len(nodes):
        raise ValueError("the graph has a cycle")
    return order


class TorchGraph:
    """Interpret ``model``'s main graph with torch (see the module docstring)."""

    def __init__(self, model: ir.Model, straight_through: bool = True) -> None:
        opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))
        if opset < _MIN_OPSET:
            raise ValueError(f"TorchGraph needs default-domain opset >= {_MIN_OPSET}, got {opset}")
        self.model = model
        self.graph = model.graph
        self.nodes: list[ir.Node] = _topological(self.graph)
        self.context = OpContext(straight_through=straight_through)
        self._constant_nodes = {
            n.outputs[0].name: n for n in self.nodes if n.op_type == "Constant" and n.domain == ""
        }
        self._cache: dict[str, tuple[object, torch.Tensor]] = {}

    def constant(self, name: str) -> torch.Tensor | None:
        """The constant called ``name`` as a torch tensor, or None if there is none."""
        value = self.graph.initializers.get(name)
        source: object
        if value is not None and value.const_value is not None:
            source = value.const_value
        elif name in self._constant_nodes:
            source = self._constant_nodes[name]
        else:
            return None
        cached = self._cache.get(name)
        if cached is not None and cached[0] is source:
            return cached[1]
        node = isinstance(source, ir.Node)
        tensor = _constant_node_tensor(source) if node else _to_torch(source)  # type: ignore[arg-type]
        self._cache[name] = (source, tensor)
        return tensor

    def run(
        self,
        env: Mapping[str, torch.Tensor],
        nodes: Sequence[ir.Node] | None = None,
        overrides: Mapping[str, torch.Tensor] | None = None,
        keep: Collection[str] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Execute ``nodes`` (default: the whole graph) in order and return what they produce.

        With ``keep``, only those names are returned (a kept name the nodes do not produce but
        ``env`` holds is passed through, so the result can serve as the next run's ``env``) and
        every other value is dropped once its last reader in ``nodes`` has run.
        """
        nodes = self.nodes if nodes is None else nodes
        overrides = overrides or {}
        kept = None if keep is None else set(keep)
        uses = Counter(v.name for n in nodes for v in n.inputs if v is not None)
        values: dict[str, torch.Tensor] = {}
        for node in nodes:
            args = [
                None if v is None else self._read(v.name or "", node, values, env, overrides)
                for v in node.inputs
            ]
            for v, tensor in zip(node.outputs, self._execute(node, args), strict=False):
                values[v.name or ""] = tensor
            if kept is not None:
                self._free(node, values, uses, kept)
        if kept is None:
            return values
        out = {name: values[name] for name in kept if name in values}
        out.update({name: env[name] for name in kept - out.keys() if name in env})
        return out

    @staticmethod
    def _free(
        node: ir.Node, values: dict[str, torch.Tensor], uses: Counter[str], kept: set[str]
    ) -> None:
        for v in node.inputs:
            if v is not None:
                uses[v.name or ""] -= 1
        for v in [*node.inputs, *node.outputs]:
            name = v.name if v is not None else None
            if name and uses[name] <= 0 and name not in kept:
                values.pop(name, None)

    def _read(
        self,
        name: str,
        node: ir.Node,
        values: Mapping[str, torch.Tensor],
        env: Mapping[str, torch.Tensor],
        overrides: Mapping[str, torch.Tensor],
    ) -> torch.Tensor:
        for source in (overrides, values, env):
            if name in source:
                return source[name]
        tensor = self.constant(name)
        if tensor is None:
            raise KeyError(
                f"value {name!r} read by node {node.name!r} ({node.op_type}) is not in the "
                "overrides, the environment, the values produced so far or the constants"
            )
        return tensor

    def _execute(self, node: ir.Node, args: list[torch.Tensor | None]) -> list[torch.Tensor]:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            tensor = self.constant(node.outputs[0].name or "")
            assert tensor is not None
            return [tensor]
        fn = OPS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if fn is None:
            op = f"{node.domain}::{node.op_type}" if node.domain else node.op_type
            raise NotImplementedError(f"TorchGraph has no op {op} (node {node.name!r})")
        try:
            return [fn(self.context, node, args)]
        except (RuntimeError, ValueError, IndexError, TypeError) as exc:
            raise type(exc)(f"{node.op_type} node {node.name!r}: {exc}") from exc
