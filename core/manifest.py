"""``smoothrot.json``: what a model directory holds and how it was made.

Every directory smoothrot writes has one; readers (eval, generate, calibrate, compile) take
their I/O names and dimensions from it instead of guessing from the graph.
"""

from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass, field, fields
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


def _dims(raw: Any) -> ModelDims:
    """``dims`` of a manifest: an object of exactly ModelDims' fields, each a positive int."""
    if not isinstance(raw, dict):
        raise ValueError(f"dims must be an object, got {type(raw).__name__}")
    names = [f.name for f in fields(ModelDims)]
    if sorted(raw) != sorted(names):
        raise ValueError(f"dims must have exactly the fields {', '.join(names)}")
    for name in names:
        value = raw[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"dims.{name} must be a positive integer, got {value!r}")
    dims = ModelDims(**raw)
    if dims.heads % dims.kv_heads:
        raise ValueError(f"dims.heads ({dims.heads}) is not a multiple of kv_heads")
    return dims


def _check_fields(raw: dict[str, Any]) -> None:
    """The types of the fields readers index into, and a plain file name for the graph."""
    for name, kind in (("inputs", list), ("outputs", list), ("stages", list)):
        if not isinstance(raw.get(name, []), kind):
            raise ValueError(f"{name} must be a list")
    for name in ("inputs", "outputs"):
        if not all(isinstance(n, str) for n in raw.get(name, [])):
            raise ValueError(f"{name} must be a list of names")
    for name in ("source", "versions", "weights"):
        if not isinstance(raw.get(name, {}), dict):
            raise ValueError(f"{name} must be an object")
    if not all(isinstance(v, str) for v in raw.get("weights", {}).values()):
        raise ValueError("weights must map module names to initializer names")
    model_file = raw.get("model_file", MODEL_FILE)
    if (
        not isinstance(model_file, str)
        or Path(model_file).name != model_file
        or (model_file in ("", ".", ".."))
    ):
        raise ValueError(f"model_file must be a file name in the directory, got {model_file!r}")


def load_manifest(directory: str | Path) -> Manifest:
    """Read a model directory's manifest, or say plainly why it is not one: not an object, a
    field of the wrong type, dims that are not positive integers, a model file outside the
    directory, past inputs that do not match the layer count are all one ``SmoothrotError``."""
    directory = Path(directory)
    if not directory.exists():
        raise SmoothrotError(f"model directory {directory} does not exist")
    path = directory / MANIFEST_NAME
    if not path.is_file():
        raise SmoothrotError(f"{directory} is not a smoothrot model directory (no {MANIFEST_NAME})")
    try:
        raw = json.loads(path.read_text())
        if not isinstance(raw, dict):
            raise ValueError(f"it is a JSON {type(raw).__name__}, not an object")
        if raw.get("format") != "smoothrot-model":
            raise ValueError("format is not smoothrot-model")
        if raw.get("version") != MANIFEST_VERSION:
            raise ValueError(f"manifest version {raw.get('version')} != {MANIFEST_VERSION}")
        _check_fields(raw)
        raw["dims"] = _dims(raw.get("dims"))
        raw["dtype"] = DType(raw["dtype"])
        manifest = Manifest(**raw)
        if len(manifest.past_names) != 2 * manifest.dims.layers:
            raise ValueError(
                f"{len(manifest.past_names)} past inputs for {manifest.dims.layers} layers"
            )
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, ValueError, KeyError) as exc:
        raise SmoothrotError(f"{path} is not a valid manifest: {exc}") from exc
    if not (directory / manifest.model_file).is_file():
        raise SmoothrotError(f"{directory} has no {manifest.model_file}")
    return manifest
