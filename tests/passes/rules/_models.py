"""Shared helpers of the rule tests: models from ONNX text, ONNX Runtime runs, constants."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx_ir as ir
import onnxruntime as ort


def parse(text: str) -> ir.Model:
    return ir.from_onnx_text(text)


def copy(model: ir.Model) -> ir.Model:
    return ir.serde.deserialize_model(ir.serde.serialize_model(model))


def op_types(model: ir.Model) -> list[str]:
    return [node.op_type for node in model.graph]


def node(model: ir.Model, name: str) -> ir.Node:
    return next(n for n in model.graph if n.name == name)


def floats(array: np.ndarray) -> str:
    """``array``'s values as ONNX text (a tensor literal's body)."""
    return ", ".join(repr(float(v)) for v in np.asarray(array).reshape(-1))


def ints(array: np.ndarray) -> str:
    return ", ".join(str(int(v)) for v in np.asarray(array).reshape(-1))


def to_int4(model: ir.Model, name: str) -> None:
    """Make the int8 initializer ``name`` INT4 (ONNX text cannot spell int4 literals)."""
    value = model.graph.initializers[name]
    value.const_value = ir.tensor(value.const_value.numpy().astype(ml_dtypes.int4), name=name)
    value.type = ir.TensorType(ir.DataType.INT4)


def run(model: ir.Model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The graph as written (no ORT fusions: they change roundings), on the CPU."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    proto = ir.to_proto(model).SerializeToString()
    session = ort.InferenceSession(proto, options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)
