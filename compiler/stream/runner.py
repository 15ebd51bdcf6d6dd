"""ONNX Runtime over one saved segment, fed the residual stream instead of token ids.

A :class:`SegmentRunner` cuts the segment at its residual input (``cut_model``) and returns the
residual output and any other named values (the MatMul inputs calibration reads) for each
sequence of a :class:`Stream`. The streams are what flows between layers: ``[sequences, seq,
hidden]`` fp32 arrays of the residual stream on the calibration or evaluation tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from smoothrot.compiler.calibrate.statistics import Accumulator
from smoothrot.compiler.runtime.ort_runner import session_options
from smoothrot.compiler.stream.graph_parts import cut_model
from smoothrot.core.manifest import MODEL_FILE, ModelDims

__all__ = ["SegmentRunner", "collect_statistics"]

Consumer = Callable[[int, dict[str, np.ndarray]], None]


def _hidden_input(name: str) -> onnx.ValueInfoProto:
    return onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, ["batch", "seq", None])


class SegmentRunner:
    """Runs ``directory``'s segment from the value ``h_in`` (``None``: from the token ids) to
    ``outputs``."""

    def __init__(self, directory: Path, h_in: str | None, outputs: list[str], dims: ModelDims):
        proto = onnx.load(str(Path(directory) / MODEL_FILE), load_external_data=False)
        inputs = {h_in: _hidden_input(h_in)} if h_in is not None else {}
        cut = cut_model(proto, inputs, outputs)
        options = session_options()
        options.add_session_config_entry(
            "session.model_external_initializers_file_folder_path", str(directory)
        )
        self.session = ort.InferenceSession(
            cut.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        self.h_in, self.outputs, self.dims = h_in, outputs, dims
        self.feeds = {i.name for i in self.session.get_inputs()}

    def _feeds(self, ids: np.ndarray, hidden: np.ndarray | None) -> dict[str, np.ndarray]:
        seq, d = ids.shape[0], self.dims
        every = {
            "input_ids": ids[None, :],
            "attention_mask": np.ones((1, seq), np.int64),
            "position_ids": np.arange(seq, dtype=np.int64)[None, :],
        }
        for name in self.feeds:
            if name.startswith("past."):
                every[name] = np.zeros((1, d.kv_heads, 0, d.head_dim), np.float32)
        if self.h_in is not None:
            assert hidden is not None
            every[self.h_in] = hidden[None]
        return {k: v for k, v in every.items() if k in self.feeds}

    def run(self, ids: np.ndarray, hidden: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The outputs for one sequence ``ids [seq]`` (and its residual ``hidden [seq, H]``)."""
        values = self.session.run(self.outputs, self._feeds(ids, hidden))
        return {
            n: v[0] if v.ndim >= 1 and v.shape[0] == 1 else v
            for n, v in zip(self.outputs, values, strict=True)
        }

    def stream(
        self,
        ids: np.ndarray,
        hidden: np.ndarray | None,
        out_name: str,
        consume: Consumer | None = None,
    ) -> np.ndarray:
        """``out_name`` for every sequence of ``ids [n, seq]`` (with ``hidden [n, seq, H]``), as
        one array; ``consume(i, values)`` sees each sequence's outputs first."""
        result: np.ndarray | None = None
        for i in range(ids.shape[0]):
            values = self.run(ids[i], None if hidden is None else hidden[i])
            if consume is not None:
                consume(i, values)
            out = values[out_name]
            if result is None:
                result = np.empty((ids.shape[0], *out.shape), out.dtype)
            result[i] = out
        assert result is not None
        return result


def collect_statistics(
    runner: SegmentRunner,
    inputs: list[str],
    ids: np.ndarray,
    hidden: np.ndarray,
    out_name: str,
    hessian: bool,
) -> tuple[np.ndarray, dict[str, Accumulator]]:
    """``runner``'s ``out_name`` stream and the statistics of the values ``inputs`` (among its
    outputs) over every sequence."""
    acc: dict[str, Accumulator] = {}

    def add(_: int, values: dict[str, np.ndarray]) -> None:
        for name in inputs:
            x = values[name]
            if name not in acc:
                acc[name] = Accumulator(x.shape[-1], hessian)
            acc[name].add(x)

    return runner.stream(ids, hidden, out_name, add), acc
