"""``smoothrot eval``: perplexity of a model directory on a text (default: the evaluation part)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from smoothrot.compiler.config import EvalConfig
from smoothrot.compiler.corpus import CorpusPart, corpus_part, text_digest
from smoothrot.compiler.errors import SmoothrotError
from smoothrot.compiler.perplexity import perplexity
from smoothrot.compiler.runner import OrtDecoder, load_tokenizer

__all__ = ["evaluate_dir", "read_text"]


def read_text(path: Path | None) -> tuple[str, str]:
    """(text, label): the given file, or the built-in evaluation part."""
    if path is None:
        return corpus_part(CorpusPart.EVALUATION), "pydoc_data evaluation part"
    if not path.is_file():
        raise SmoothrotError(f"text file {path} does not exist")
    try:
        return path.read_text(encoding="utf-8"), str(path)
    except UnicodeDecodeError as exc:
        raise SmoothrotError(f"text file {path} is not UTF-8: {exc}") from exc


def evaluate_dir(
    directory: Path, config: EvalConfig, text_file: Path | None = None, progress: bool = True
) -> dict[str, Any]:
    decoder = OrtDecoder(directory)
    text, label = read_text(text_file)
    ids = load_tokenizer(directory).encode(text, add_special_tokens=False)
    result = perplexity(lambda x: decoder.forward(x)[0], ids, config, progress=progress)
    return {**asdict(result), "text": label, "text_sha256_16": text_digest(text)}
