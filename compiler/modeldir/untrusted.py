"""What smoothrot accepts from a model directory it did not write, checked before any library
reads it. Each refusal is one ``SmoothrotError`` naming the file.

- **No code.** An ``auto_map`` in ``config.json`` or ``tokenizer_config.json`` names a Python
  file that transformers would import; it is refused outright, and every transformers call
  passes ``trust_remote_code=False`` (transformers would otherwise ask on stdin). Only the files
  in :data:`TOKENIZER_FILES` ever go from a model directory into an output.
- **No pickles by default.** Weights load from ``*.safetensors`` only; a directory with only
  ``pytorch_model*.bin`` is refused unless ``allow_pickle``, and then ``torch.load`` runs with
  ``weights_only=True``.
- **Weights whose files hold them.** Every ``*.safetensors`` header is read and its tensors'
  byte ranges checked against the file's size (an empty or truncated file is refused); a
  sharded index may only name plain files of the directory.
- **A tokenizer that exists and parses**, at source resolution time (before any slow work).
"""

from __future__ import annotations

import contextlib
import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from smoothrot.core.errors import SmoothrotError

__all__ = [
    "CODE_CONFIGS",
    "LICENSE_FILES",
    "TOKENIZER_FILES",
    "check_tokenizer_files",
    "check_weights",
    "load_tokenizer_safely",
    "quiet_transformers",
    "read_json",
    "refuse_auto_map",
]

CODE_CONFIGS = ("config.json", "tokenizer_config.json")  # where transformers reads auto_map
# Files a tokenizer may consist of; the only files ever copied from a model directory.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
)
# A model's terms of use and notices: they travel with every output made from it.
LICENSE_FILES = (
    "LICENSE",
    "LICENSE.txt",
    "LICENSE.md",
    "NOTICE",
    "NOTICE.md",
    "USE_POLICY.md",
    "GEMMA_TERMS.html",
)
_VOCAB_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt")
_PICKLES = ("pytorch_model*.bin",)
_MAX_HEADER = 100 * 2**20  # safetensors caps its JSON header at 100 MB


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``, or a one-line refusal naming it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SmoothrotError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise SmoothrotError(f"{path} is not a JSON object (it is a {type(data).__name__})")
    return data


def refuse_auto_map(directory: Path) -> None:
    """Refuse a directory whose configs point transformers at Python code of their own."""
    for name in CODE_CONFIGS:
        path = directory / name
        if path.is_file() and "auto_map" in read_json(path):
            raise SmoothrotError(
                f"{path} has an auto_map (custom Python code of the model); smoothrot never "
                "runs code from a model directory: remove the auto_map or use a model that "
                "transformers supports natively"
            )


def check_tokenizer_files(directory: Path) -> None:
    """A tokenizer is there (one of :data:`_VOCAB_FILES`) and its ``tokenizer.json`` parses."""
    if not any((directory / name).is_file() for name in _VOCAB_FILES):
        raise SmoothrotError(f"{directory} has no tokenizer (none of {', '.join(_VOCAB_FILES)})")
    path = directory / "tokenizer.json"
    if path.is_file():
        from tokenizers import Tokenizer

        try:
            Tokenizer.from_file(str(path))
        except Exception as exc:  # noqa: BLE001 - the Rust parser raises plain Exception
            raise SmoothrotError(f"{path} is not a valid tokenizer: {_first_line(exc)}") from exc


def _check_safetensors(path: Path) -> None:
    """The header parses and every tensor's bytes lie inside the file."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise SmoothrotError(f"{path} is empty or truncated (no safetensors header)")
        (length,) = struct.unpack("<Q", head)
        if length > min(size - 8, _MAX_HEADER):
            raise SmoothrotError(
                f"{path} is truncated or not a safetensors file (header of {length} bytes, "
                f"file of {size})"
            )
        try:
            header = json.loads(f.read(length))
            ends = [int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"]
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
            raise SmoothrotError(f"{path} has a corrupt safetensors header: {exc}") from exc
    end = 8 + length + max(ends, default=0)
    if end > size:
        raise SmoothrotError(
            f"{path} is truncated: its tensors end at byte {end}, the file has {size}"
        )


def _check_index(index: Path) -> None:
    """A sharded checkpoint's index names only plain files of its directory, all present."""
    weight_map = read_json(index).get("weight_map", {})
    if not isinstance(weight_map, dict):
        raise SmoothrotError(f"{index}: weight_map is not an object")
    for shard in set(weight_map.values()):
        if not isinstance(shard, str) or Path(shard).name != shard or shard in ("", ".", ".."):
            raise SmoothrotError(f"{index} names {shard!r}, not a file of its directory")
        if not (index.parent / shard).is_file():
            raise SmoothrotError(f"{index} names {shard}, which is missing")


def check_weights(directory: Path, allow_pickle: bool = False) -> bool:
    """Check the weight files and say how to load them: ``True`` for safetensors (always
    preferred), ``False`` for pickles (only with ``allow_pickle``)."""
    tensors = sorted(directory.glob("*.safetensors"))
    for index in directory.glob("*.safetensors.index.json"):
        _check_index(index)
    if tensors:
        for path in tensors:
            _check_safetensors(path)
        return True
    pickles = sorted(p for pattern in _PICKLES for p in directory.glob(pattern))
    if not pickles:
        raise SmoothrotError(f"{directory} has no weights (*.safetensors or pytorch_model*.bin)")
    if not allow_pickle:
        raise SmoothrotError(
            f"{pickles[0]} is a pickle (it can run code when loaded) and {directory} has no "
            "*.safetensors; smoothrot loads pickles only with --allow-pickle (weights_only)"
        )
    for index in directory.glob("pytorch_model*.bin.index.json"):
        _check_index(index)
    return False


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' warnings and progress bars off (a refusal must be the only line)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def load_tokenizer_safely(directory: Path, **kwargs: Any):  # noqa: ANN201 - a HF tokenizer
    """``AutoTokenizer.from_pretrained`` on a checked directory, never running its code; a
    failure is one line naming the directory."""
    from transformers import AutoTokenizer

    refuse_auto_map(directory)
    try:
        with quiet_transformers():
            return AutoTokenizer.from_pretrained(
                str(directory), trust_remote_code=False, local_files_only=True, **kwargs
            )
    except SmoothrotError:
        raise
    except Exception as exc:  # noqa: BLE001 - tokenizer backends raise anything
        raise SmoothrotError(
            f"cannot load the tokenizer of {directory}: {_first_line(exc)}"
        ) from exc
