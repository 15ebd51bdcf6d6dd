"""``smoothrot.json``: what a model directory holds and how it was made.

Every directory smoothrot writes has one; readers (eval, generate, calibrate, compile) take
their I/O names and dimensions from it instead of guessing from the graph.
"""

from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from smoothrot.core.errors import SmoothrotError

__all__ = [
    "DType",
    "KV_PREFIX_INPUT",
    "MANIFEST_NAME",
    "MANIFEST_VERSION",
    "ModelDims",
    "Manifest",
    "load_manifest",
]

MANIFEST_NAME = "smoothrot.json"
MANIFEST_VERSION = 1
MODEL_FILE = "model.onnx"
# Optional graph input (int64 scalar, an overridable initializer) of models with a quantized KV
# cache: positions below it keep fp K/V (BiSup's P). Written by passes/quantize_kv.py.
KV_PREFIX_INPUT = "kv_fp_prefix"


class DType(enum.Enum):
    """The compute dtype of a model directory's graph."""

    FP32 = "fp32"
    FP16 = "fp16"

    @property
    def torch(self):  # noqa: ANN201 - torch is imported lazily
        import torch

        return {DType.FP32: torch.float32, DType.FP16: torch.float16}[self]

    @property
    def numpy(self):  # noqa: ANN201
        import numpy as np

        return {DType.FP32: np.float32, DType.FP16: np.float16}[self]


@dataclass(frozen=True)
class ModelDims:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int


@dataclass(frozen=True)
class Manifest:
    """Contents of ``smoothrot.json``. ``weights`` maps a torch module name to its MatMul
    weight initializer (``[K_in, N_out]``), the stable layer identity used by calibration."""

    source: dict[str, str]
    architecture: str
    dims: ModelDims
    opset: int
    dtype: DType
    inputs: list[str]
    outputs: list[str]
    versions: dict[str, str]
    weights: dict[str, str]
    model_file: str = MODEL_FILE
    stages: list[dict[str, Any]] = field(default_factory=list)
    format: str = "smoothrot-model"
    version: int = MANIFEST_VERSION

    @property
    def past_names(self) -> list[str]:
        return [n for n in self.inputs if n.startswith("past.")]

    def save(self, directory: Path) -> None:
        data = {**asdict(self), "dtype": self.dtype.value}
        (Path(directory) / MANIFEST_NAME).write_text(json.dumps(data, indent=2) + "\n")


def load_manifest(directory: str | Path) -> Manifest:
    """Read a model directory's manifest, or say plainly why it is not one."""
    directory = Path(directory)
    if not directory.exists():
        raise SmoothrotError(f"model directory {directory} does not exist")
    path = directory / MANIFEST_NAME
    if not path.is_file():
        raise SmoothrotError(f"{directory} is not a smoothrot model directory (no {MANIFEST_NAME})")
    try:
        raw = json.loads(path.read_text())
        if raw.get("format") != "smoothrot-model":
            raise ValueError("format is not smoothrot-model")
        if raw.get("version") != MANIFEST_VERSION:
            raise ValueError(f"manifest version {raw.get('version')} != {MANIFEST_VERSION}")
        raw["dims"] = ModelDims(**raw["dims"])
        raw["dtype"] = DType(raw["dtype"])
        manifest = Manifest(**raw)
    except (json.JSONDecodeError, TypeError, ValueError, KeyError) as exc:
        raise SmoothrotError(f"{path} is not a valid manifest: {exc}") from exc
    if not (directory / manifest.model_file).is_file():
        raise SmoothrotError(f"{directory} has no {manifest.model_file}")
    return manifest
