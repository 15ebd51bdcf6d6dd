"""The op table of ``TorchGraph``: each ONNX op (default domain, opset >= 13 semantics) as torch.

Every op takes ``(ctx, node, inputs)`` — the node for its attributes, its inputs as torch tensors
(``None`` for an omitted optional input) — and returns its output tensor. Float ops are written
with differentiable torch ops, so gradients flow to any float input; integer shape arithmetic
(``Shape``, ``Range``, ``Gather`` on shapes, ``Reshape`` targets) stays int64 and carries none.

Quantization follows ONNX Runtime's float semantics: ``QuantizeLinear`` is
``saturate(round_half_to_even(x / scale) + zero_point)`` kept in float (no integer dtype), with
the round straight-through in backward (``ctx.straight_through``) and the saturation a
``torch.clamp`` to the output type's range; ``DequantizeLinear`` is ``(q − zero_point) · scale``.
Per-tensor, per-axis and blocked (``block_size``) parameters are supported; a blocked scale is
repeated along its axis.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
import torch

__all__ = [
    "OPS",
    "QUANT_RANGES",
    "TORCH_DTYPES",
    "OpContext",
]

TORCH_DTYPES: dict[ir.DataType, torch.dtype] = {
    ir.DataType.FLOAT: torch.float32,
    ir.DataType.FLOAT16: torch.float16,
    ir.DataType.BFLOAT16: torch.bfloat16,
    ir.DataType.DOUBLE: torch.float64,
    ir.DataType.INT64: torch.int64,
    ir.DataType.INT32: torch.int32,
    ir.DataType.INT16: torch.int16,
    ir.DataType.INT8: torch.int8,
    ir.DataType.UINT8: torch.uint8,
    ir.DataType.BOOL: torch.bool,
}

# Saturation range of each quantized output type.
QUANT_RANGES: dict[ir.DataType, tuple[int, int]] = {
    ir.DataType.INT8: (-128, 127),
    ir.DataType.UINT8: (0, 255),
    ir.DataType.INT4: (-8, 7),
    ir.DataType.UINT4: (0, 15),
    ir.DataType.INT16: (-32768, 32767),
    ir.DataType.UINT16: (0, 65535),
}


@dataclass(frozen=True)
class OpContext:
    straight_through: bool = True  # QuantizeLinear / Round: identity gradient through the round


Inputs = Sequence[torch.Tensor | None]
OpFn = Callable[[OpContext, ir.Node, Inputs], torch.Tensor]
OPS: dict[str, OpFn] = {}


def _op(*names: str) -> Callable[[OpFn], OpFn]:
    def register(fn: OpFn) -> OpFn:
        for name in names:
            OPS[name] = fn
        return fn

    return register


def _ints(t: torch.Tensor) -> list[int]:
    return [int(v) for v in t.reshape(-1).tolist()]


def _arg(inputs: Inputs, i: int) -> torch.Tensor | None:
    return inputs[i] if i < len(inputs) else None


def _need(inputs: Inputs, i: int) -> torch.Tensor:
    t = _arg(inputs, i)
    if t is None:
        raise ValueError(f"input {i} is required")
    return t


def _axes(node: ir.Node, inputs: Inputs, index: int) -> list[int] | None:
    """Axes from the ``axes`` attribute (old opsets) or the optional input ``index``."""
    if "axes" in node.attributes:
        return list(node.attributes["axes"].as_ints())
    t = _arg(inputs, index)
    return None if t is None else _ints(t)


# Elementwise -------------------------------------------------------------------------------


for _name, _fn in {
    "Abs": torch.abs,
    "Neg": torch.neg,
    "Sqrt": torch.sqrt,
    "Reciprocal": torch.reciprocal,
    "Sigmoid": torch.sigmoid,
    "Cos": torch.cos,
    "Sin": torch.sin,
    "Exp": torch.exp,
    "Log": torch.log,
    "Erf": torch.erf,
    "Tanh": torch.tanh,
    "Relu": torch.relu,
    "Floor": torch.floor,
    "Ceil": torch.ceil,
    "IsNaN": torch.isnan,
    "Not": torch.logical_not,
    "Identity": lambda t: t,
}.items():
    OPS[_name] = lambda ctx, node, x, fn=_fn: fn(_need(x, 0))

for _name, _fn in {
    "Add": torch.add,
    "Sub": torch.sub,
    "Mul": torch.mul,
    "MatMul": torch.matmul,
    "And": torch.logical_and,
    "Or": torch.logical_or,
    "Xor": torch.logical_xor,
    "Equal": torch.eq,
    "Less": torch.lt,
    "LessOrEqual": torch.le,
    "Greater": torch.gt,
    "GreaterOrEqual": torch.ge,
}.items():
    OPS[_name] = lambda ctx, node, x, fn=_fn: fn(_need(x, 0), _need(x, 1))


@_op("Div")
def _div(ctx: OpContext, node: ir.Node, x: Inputs) -> torch.Tensor:
    a, b = _need(x, 0), _need(x, 1)
    if a.is_floating_point():
        return a / b
    return torch.div(a, b, rounding_mode="trunc")  # C integer division, as ONNX Runtime


@_op("Pow")
def _pow(ctx: OpContext, node: ir.Node, x: Inputs) -> torch.Tensor:
    a = _need(x, 0)
    return torch.pow(a, _need(x, 1)).to(a.dtype)


@_op("Max", "Min")
def _max_min(ctx: OpContext, node: ir.Node, x: Inputs) -> torch.Tensor:
    fn = torch.maximum if node.op_type == "Max" else torch.minimum
    out = _need(x, 0)
    for t in x[1:]:
        assert t is not None
        out = fn(out, t)
    return out


@_op("Gelu")
def _gelu(ctx: OpContext, node: ir.Node, x: Inputs) -> torch.Tensor:
    """ONNX Gelu (opset 20): exact (erf) or ``approximate="tanh"`` (Gemma's gelu_pytorch_tanh)."""
    approximate = node.attributes.get_string("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise NotImplementedError(f"Gelu with approximate={approximate!r} (node {node.name!r})")
    return torch.nn.functional.gelu(_need(x, 0), approximate=approximate)


OPS["Where"] = lambda ctx, node, x: torch.where(_need(x, 0).bool(), _need(x, 1), _need(x, 2))
OPS["Clip"] = lambda ctx, node, x: torch.clamp(_need(x, 0), _arg(x, 1), _arg(x, 2))
OPS["Round"] = lambda ctx, node, x: _round_half_even(_need(x, 0), ctx)
OPS["Softmax"] = lambda ctx, node, x: torch.softmax(
    _need(x, 0), node.attributes.get_int("axis", -1)
)


@_op("Cast")
def _cast(ctx: OpContext, node: ir.Node, x: Inputs) -> torch.Tensor:
    to = ir.DataType(node.attributes.get_int("to", 0))
    if to not in TORCH_DTYPES:
        raise NotImplementedError(f"Cast to {to.name}")
    return _need(x, 0).to(TORCH_DTYPES[to])


# Reductions --------------------------------------------------------------------------------

_REDUCE = {
    "ReduceMean": lambda t, dims, keep: torch.mean(t, dims, keep),
    "ReduceSum": lambda t, dims, keep: torch.sum(t, dims, keep),
    "ReduceMax": lambda t, dims, keep: torch.amax(t, dims, keep),
    "ReduceMin": lambda t, dims, keep: torch.amin(t, dims, keep),
}


@_op(*_REDUCE)
def _reduce(ctx: OpContext, node: ir.Node, x: Inputs) -> torch.Tensor:
    t = _need(x, 0)
    axes = _axes(node, x, 1)
    keep = bool(node.attributes.get_int("keepdims", 1))
    if not axes:
        if node.attributes.get_int("noop_with_empty_axes", 0):
            return t
        axes = list(range(t.dim()))
    return _REDUCE[node.op_type](t, [a % t.dim() for a in axes], keep)


# Shapes ------------------------------------------------------------------------------------


@_op("Shape")
def _shape(ctx: OpContext, node: ir.Node, x: Inputs) -> torch.Tensor:
    dims = list(_need(x, 0).shape)
    start = node.attributes.get_int("start", 0)
    end = node.attributes.get_int("end", len(dims))
    return torch.tensor(dims[slice(start, end)], dtype=torch.int64)


@_op("Reshape")
def _reshape(ctx: OpContext, node: ir.Node, x: Inputs) -> torch.Tensor:
    t, shape = _need(x, 0), _ints(_need(x, 1))
    if not node.attributes.get_int("allowzero", 0):
        shape = [t.shape[i] if v == 0 else v for i, v in enumerate(shape)]
    return t.reshape(shape)


@_op("Transpose")
def _transpose(ctx: OpContext, node: ir.Node, x: Inputs) -> torch.Tensor:
    t = _need(x, 0)
    perm = node.attributes.get_ints("perm", None)
    return t.permute(list(perm) if perm is not None else list(reversed(range(t.dim()))))


@_op("Unsqueeze")
def _unsqueeze(ctx: OpContext, node: ir.Node, x: Inputs) -> torch.Tensor:
    t, axes = _need(x, 0), _axes(node, x, 1) or []
    rank = t.dim() + len(axes)
    for a in sorted(a % rank for a in axes):
        t = t.unsqueeze(a)
    return t


@_op("Squeeze")
def _squeeze(ctx: OpContext, node: ir.Node, x: Inputs) -> torch.Tensor:
    t, axes = _need(x, 0), _axes(node, x, 1)
    if axes is None:
        return t.squeeze()
    return t.squeeze(tuple(a % t.dim() for a in axes))


@_op("Concat")
def _concat(ctx: OpContext, node: ir.Node, x: Inputs) -> torch.Tensor:
    return torch.cat([t for t in x if t is not None], node.attributes.get_int("axis", 0))


@_op("Expand")
def _expand(ctx: OpContext, node: ir.Node, x: Inputs) -> torch.Tensor:
    t = _need(x, 0)
    return t.expand(torch.broadcast_shapes(t.shape, tuple(_ints(_need(x, 1)))))


@_op("Slice")
def _slice(ctx: OpContext, node: ir.Node, x: Inputs) -> torch.Tensor:
    t, starts, ends = _need(x, 0), _ints(_need(x, 1)), _ints(_need(x, 2))
    axes_t, steps_t = _arg(x, 3), _arg(x, 4)
    axes = _ints(axes_t) if axes_t is not None else list(range(len(starts)))
    steps = _ints(steps_t) if steps_t is not None else [1] * len(starts)
    index: list[slice] = [slice(None)] * t.dim()
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        axis %= t.dim()
        dim = t.shape[axis]
        start, end = start + dim if start < 0 else start, end + dim if end < 0 else end
        if step > 0:
            index[axis] = slice(min(max(start, 0), dim), min(max(end, 0), dim), step)
        elif step < 0:  # torch slicing has no negative steps: gather the indices
            start, end = min(max(start, -1), dim - 1), min(max(end, -1), dim - 1)
            t = t.index_select(axis, torch.arange(start, end, step, dtype=torch.int64))
        else:
            raise ValueError("Slice step 0")
    return t[tuple(index)]


@_op("Gather")
def _gather(ctx: OpContext, node: ir.Node, x: Inputs) -> torch.Tensor:
    t, idx = _need(x, 0), _need(x, 1).long()
    axis = node.attributes.get_int("axis", 0) % t.dim()
    idx = torch.where(idx < 0, idx + t.shape[axis], idx)
    out = t.index_select(axis, idx.reshape(-1))
    return out.reshape(t.shape[:axis] + idx.shape + t.shape[axis + 1 :])


@_op("GatherND")
def _gather_nd(ctx: OpContext, node: ir.Node, x: Inputs) -> torch.Tensor:
    if node.attributes.get_int("batch_dims", 0):
        raise NotImplementedError(f"GatherND with batch_dims (node {node.name!r})")
    t, idx = _need(x, 0), _need(x, 1).long()
    k = idx.shape[-1]
    idx = torch.where(idx < 0, idx + torch.tensor(t.shape[:k], dtype=torch.int64), idx)
    return t[tuple(idx[..., j] for j in range(k))]


@_op("Range")
def _range(ctx: OpContext, node: ir.Node, x: Inputs) -> torch.Tensor:
    start, limit, delta = _need(x, 0), _need(x, 1), _need(x, 2)
    return torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype)


@_op("ConstantOfShape")
def _constant_of_shape(ctx: OpContext, node: ir.Node, x: Inputs) -> torch.Tensor:
    value = node.attributes.get_tensor("value", None)
    fill = np.zeros((), np.float32) if value is None else value.numpy().reshape(())
    return torch.from_numpy(np.array(fill)).expand(_ints(_need(x, 0))).clone()


# Quantization ------------------------------------------------------------------------------


def _round_half_even(v: torch.Tensor, ctx: OpContext) -> torch.Tensor:
    if not ctx.straight_through or not v.is_floating_point():
        return torch.round(v)
    detached = v.detach()
    return torch.round(detached) + (v - detached)  # forward exactly round(v), gradient 1


def _per(param: torch.Tensor, x: torch.Tensor, axis: int, block: int) -> torch.Tensor:
    """``param`` (scale / zero point) broadcast to ``x``: per-tensor, per-axis or blocked."""
    if param.dim() == 0 or (param.numel() == 1 and block == 0):
        return param.reshape(())
    axis %= x.dim()
    if block > 0:
        if param.dim() != x.dim():
            raise ValueError(f"a blocked parameter has rank {param.dim()}, its input {x.dim()}")
        if param.shape[axis] == 1:
            return param
        return param.repeat_interleave(block, dim=axis).narrow(axis, 0, x.shape[axis])
    shape = [1] * x.dim()
    shape[axis] = -1
    return param.reshape(shape)


def _quant_type(node: ir.Node) -> ir.DataType:
    out = node.attributes.get_int("output_dtype", 0)
    if out:
        return ir.DataType(out)
    zp = node.inputs[2] if len(node.inputs) > 2 else None
    if zp is not None:
        if zp.dtype is None:
            raise ValueError(f"QuantizeLinear {node.name!r}: zero point of unknown type")
        return zp.dtype
    return ir.DataType.UINT8


@_op("QuantizeLinear")
def _quantize(ctx: OpContext, node: ir.Node, x: Inputs) -> torch.Tensor:
    t, scale, zp = _need(x, 0), _need(x, 1), _arg(x, 2)
    axis, block = node.attributes.get_int("axis", 1), node.attributes.get_int("block_size", 0)
    qtype = _quant_type(node)
    if qtype not in QUANT_RANGES:
        raise NotImplementedError(f"QuantizeLinear to {qtype.name} (node {node.name!r})")
    q = _round_half_even(t / _per(scale, t, axis, block), ctx)
    if zp is not None:
        q = q + _per(zp.to(q.dtype), t, axis, block)
    lo, hi = QUANT_RANGES[qtype]
    return torch.clamp(q, lo, hi)


@_op("DequantizeLinear")
def _dequantize(ctx: OpContext, node: ir.Node, x: Inputs) -> torch.Tensor:
    q, scale, zp = _need(x, 0), _need(x, 1), _arg(x, 2)
    axis, block = node.attributes.get_int("axis", 1), node.attributes.get_int("block_size", 0)
    q = q.to(scale.dtype)
    if zp is not None:
        q = q - _per(zp.to(scale.dtype), q, axis, block)
    return q * _per(scale, q, axis, block)
