"""Convert a compiled fp32 graph to fp16 compute, keeping the two places fp16 cannot hold in fp32.

TensorRT builds strongly typed networks: every layer runs in the type the ONNX graph gives it,
so the precision plan is written into the graph. This pass gives everything fp16 (activations,
KV cache inputs/outputs, float weights, INT4 dequantization scales, Hadamard factors) except two
*fp32 islands* that the model map and a structural walk identify:

- **RMSNorm statistics**: ``Pow(x, 2) → ReduceMean → Add(ε) → Sqrt → Reciprocal``. ``x²`` of a
  residual stream with outliers of a few hundred overflows fp16 (max 65504), so ``x`` is cast to
  fp32 in front of ``Pow`` and the reciprocal RMS (a small, well-scaled number) back to fp16;
  the product ``x · r`` stays fp16, as in Hugging Face's own fp16 inference.
- **Rotary angles**: ``Cast(position ids → float) → … → Cos / Sin``. fp16 has a spacing of 2 at
  position 2048, so the angles are computed in fp32 and only cos/sin are cast to fp16.

``logits`` stays an fp32 graph output (a final Cast), so greedy ties are not made by fp16
rounding of the output. Constants are converted with saturation: values beyond ±65504 (the
attention mask's ``finfo(float32).min``) become ±65504, and non-zero values below fp16's
smallest normal in *scalar* constants (the activation QDQ's 1e-12 scale floor) become that
normal (weights simply round to fp16, subnormals included); both are counted.

A graph whose norms or rotary path do not have these forms is refused by name
(:class:`~smoothrot.passes.model_map.ModelMapError`), never converted blindly.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from smoothrot.core.manifest import ModelDims
from smoothrot.core.pass_infra import PassReport
from smoothrot.passes._conditions import require_float32
from smoothrot.passes._graph import drop_dead_initializers, new_initializer
from smoothrot.passes.model_map import ModelMapError, Norm, find_norms

__all__ = ["FP16_MAX", "FP16_TINY", "Fp16Pass"]

FP16_MAX = float(np.finfo(np.float16).max)
FP16_TINY = float(np.finfo(np.float16).tiny)  # smallest normal, 2^-14
_FLOAT, _HALF = ir.DataType.FLOAT, ir.DataType.FLOAT16
_ROTARY_LIMIT = 64  # nodes between a position Cast and Cos/Sin; more means an unknown pattern


def _norm_statistics(norm: Norm) -> tuple[ir.Node, ...]:
    """``Pow, ReduceMean, Add, Sqrt, Reciprocal`` of a decomposed RMSNorm (the model map's)."""
    if len(norm.statistics) != 5:
        raise ModelMapError(f"RMSNorm at {norm.node.name} is not the decomposed form fp16 needs")
    return norm.statistics


def _rotary_nodes(graph: ir.Graph) -> list[ir.Node]:
    """Nodes from each ``Cast(int → float)`` forward to the ``Cos``/``Sin`` they feed."""
    island: list[ir.Node] = []
    for cast in [n for n in graph if n.op_type == "Cast"]:
        source = cast.inputs[0]
        if cast.attributes.get_int("to") != _FLOAT.value or source is None:
            continue
        if source.type is None or source.type.dtype.is_floating_point():
            continue
        seen, frontier = [cast], [cast]
        while frontier:
            node = frontier.pop()
            if node.op_type in ("Cos", "Sin"):
                continue
            for out in node.outputs:
                if out.is_graph_output():
                    raise ModelMapError(f"{cast.name}: int→float cast reaches a graph output")
                for use in out.uses():
                    if use.node not in seen:
                        seen.append(use.node)
                        frontier.append(use.node)
            if len(seen) > _ROTARY_LIMIT:
                raise ModelMapError(f"{cast.name}: int→float cast does not end in Cos/Sin")
        if not any(n.op_type in ("Cos", "Sin") for n in seen):
            raise ModelMapError(f"{cast.name}: int→float cast does not end in Cos/Sin")
        island += seen
    return island


def _constant(
    graph: ir.Graph, value: ir.Value, keep_fp32: bool, done: dict, counts: dict[str, int]
) -> ir.Value:
    """The fp16 copy of the constant ``value`` (made once), saturated; counted in ``counts``."""
    if keep_fp32:
        return value
    if id(value) in done:
        return done[id(value)]
    array = value.const_value.numpy().astype(np.float64)
    big = np.abs(array) > FP16_MAX
    # Only scalars (ε, the QDQ scale floor) are raised: tensors round to fp16 subnormals.
    tiny = (array != 0) & (np.abs(array) < FP16_TINY) & (array.size == 1)
    counts["saturated"] += int(big.sum())
    counts["raised"] += int(tiny.sum())
    array = np.where(big, np.sign(array) * FP16_MAX, array)
    array = np.where(tiny, np.sign(array) * FP16_TINY, array).astype(np.float16)
    half = new_initializer(graph, f"{value.name}.fp16", array)
    done[id(value)] = half
    return half


class Fp16Pass(ir.passes.InPlacePass):
    """fp32 → fp16 with fp32 norm statistics and rotary angles (see module docstring).

    ``details``: ``island_nodes`` (nodes kept in fp32), ``saturated`` (constant elements clipped
    to ±65504), ``raised`` (non-zero scalar constants raised to fp16's smallest normal)."""

    name = "to_fp16"

    def __init__(self, dims: ModelDims, keep_fp32_domains: tuple[str, ...] = ()) -> None:
        """``keep_fp32_domains``: nodes of these domains (our TensorRT plugins) keep their
        constant inputs (scales, Hadamard factors) in fp32; their activations become fp16 and
        their outputs have their input's type."""
        super().__init__()
        self.dims = dims
        self.keep_fp32_domains = keep_fp32_domains

    def requires(self, model: ir.Model) -> None:
        require_float32(model, self.name)

    def call(self, model: ir.Model) -> PassReport:
        graph = model.graph
        _fill_missing_types(graph, self.keep_fp32_domains)
        norms = find_norms(model)  # not the whole model map: plugin nodes may replace MatMuls
        if len(norms) < 2 * self.dims.layers + 1:  # post-norms and q/k norms come on top
            raise ModelMapError(
                f"unrecognized model pattern: found {len(norms)} RMSNorms, "
                f"expected at least {2 * self.dims.layers + 1}"
            )
        island = {id(n) for norm in norms for n in _norm_statistics(norm)}
        island |= {id(n) for n in _rotary_nodes(graph)}
        counts = {"island_nodes": len(island), "saturated": 0, "raised": 0}
        converted: dict = {}  # fp32 constant → its fp16 copy; (value, type) → its Cast
        was_float = {id(v) for n in graph for v in (*n.inputs, *n.outputs) if v and _is_float(v)}
        for node in list(graph):
            inside = id(node) in island
            for index, value in enumerate(node.inputs):
                if value is None or id(value) not in was_float:
                    continue
                if value.const_value is not None and value.producer() is None:
                    keep = inside or node.domain in self.keep_fp32_domains
                    half = _constant(graph, value, keep, converted, counts)
                    node.replace_input_with(index, half)
                elif _from_island(value, island) != inside:
                    cast = _cast_of(graph, value, node, _FLOAT if inside else _HALF, converted)
                    node.replace_input_with(index, cast)
            if not inside:
                self._retype_node(node)
        for value in graph.inputs:
            if _is_float(value):
                value.type = ir.TensorType(_HALF)
        self._fp32_logits(graph)
        drop_dead_initializers(graph, list(graph.initializers.values()))  # fp32 originals
        return PassReport(model, True, counts)

    def _retype_node(self, node: ir.Node) -> None:
        if node.op_type == "Cast" and node.attributes.get_int("to") == _FLOAT.value:
            node.attributes["to"] = ir.AttrInt64("to", _HALF.value)
        elif node.op_type in ("Constant", "ConstantOfShape"):
            for name, attr in list(node.attributes.items()):
                tensor = attr.value
                if isinstance(tensor, ir.TensorProtocol) and tensor.dtype == _FLOAT:
                    half = tensor.numpy().clip(-FP16_MAX, FP16_MAX).astype(np.float16)
                    node.attributes[name] = ir.AttrTensor(name, ir.tensor(half))
        for out in node.outputs:
            if _is_float(out):
                out.type = ir.TensorType(_HALF)

    def _fp32_logits(self, graph: ir.Graph) -> None:
        for i, out in enumerate(graph.outputs):
            if out.name == "logits" and out.type is not None and out.type.dtype == _HALF:
                cast = ir.node("Cast", [out], attributes={"to": _FLOAT.value}, name="logits.fp32")
                graph.append(cast)
                logits = cast.outputs[0]
                out.name = "logits.fp16"
                logits.name, logits.type, logits.shape = "logits", ir.TensorType(_FLOAT), out.shape
                graph.outputs[i] = logits


_BOOL_OPS = frozenset(
    {"Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Equal", "Not", "And", "Or", "IsNaN"}
)
_SAME_AS_INPUT_OPS = frozenset(
    {"Abs", "Add", "Clip", "Concat", "Cos", "Div", "Expand", "Identity", "MatMul", "Max", "Min"}
    | {"Mul", "Neg", "Pow", "Reciprocal", "ReduceMax", "ReduceMean", "Reshape", "Round"}
    | {"Sigmoid", "Sin", "Slice", "Softmax", "Sqrt", "Squeeze", "Sub", "Transpose", "Unsqueeze"}
)


def _output_type(node: ir.Node, plugin_domains: tuple[str, ...]) -> ir.DataType | None:
    if node.domain in plugin_domains and node.inputs[0] is not None:  # y has x's type
        return node.inputs[0].dtype
    if node.op_type == "Cast":
        return ir.DataType(node.attributes.get_int("to"))
    if node.op_type == "DequantizeLinear" and node.inputs[1] is not None:
        return node.inputs[1].dtype
    if node.op_type == "QuantizeLinear":
        return ir.DataType(node.attributes.get_int("output_dtype", ir.DataType.UINT8.value))
    if node.op_type in _BOOL_OPS:
        return ir.DataType.BOOL
    if node.op_type in ("Shape", "Size"):
        return ir.DataType.INT64
    if node.op_type == "Where" and node.inputs[1] is not None:
        return node.inputs[1].dtype
    if node.op_type in _SAME_AS_INPUT_OPS and node.inputs[0] is not None:
        return node.inputs[0].dtype
    return None


def _fill_missing_types(graph: ir.Graph, plugin_domains: tuple[str, ...]) -> None:
    """Give untyped node outputs (our passes' inserted nodes) their element type, in graph order,
    from the op's typing rule; an op without a known rule is refused, not guessed."""
    for node in graph:
        for out in node.outputs:
            if out.type is None:
                dtype = _output_type(node, plugin_domains)
                if dtype is None:
                    raise ModelMapError(
                        f"cannot type output {out.name!r} of {node.op_type} node "
                        f"{node.name!r} for the fp16 conversion"
                    )
                out.type = ir.TensorType(dtype)


def _is_float(value: ir.Value) -> bool:
    return value.type is not None and value.type.dtype == _FLOAT


def _from_island(value: ir.Value, island: set[int]) -> bool:
    producer = value.producer()
    return producer is not None and id(producer) in island


def _cast_of(
    graph: ir.Graph, value: ir.Value, before: ir.Node, to: ir.DataType, done: dict
) -> ir.Value:
    key = (id(value), to)
    if key not in done:
        tag = "fp32" if to == _FLOAT else "fp16"
        cast = ir.node("Cast", [value], attributes={"to": to.value}, name=f"{value.name}.{tag}")
        graph.insert_before(before, cast)
        cast.outputs[0].name, cast.outputs[0].type = f"{value.name}.{tag}", ir.TensorType(to)
        cast.outputs[0].shape = value.shape
        done[key] = cast.outputs[0]
    return done[key]
