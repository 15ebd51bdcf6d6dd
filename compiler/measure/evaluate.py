"""``smoothrot eval``: perplexity of a model directory on a text (default: the evaluation part)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from smoothrot.compiler.config import EvalConfig
from smoothrot.compiler.measure.corpus import CorpusPart, corpus_part, text_digest
from smoothrot.compiler.measure.perplexity import bos_prefix, perplexity
from smoothrot.compiler.runtime.decoders import open_decoder
from smoothrot.compiler.runtime.ort_runner import load_tokenizer
from smoothrot.core.errors import SmoothrotError

__all__ = ["SYSTEM_PROMPT", "evaluate_dir", "read_text", "system_prompt_ids"]


def read_text(path: Path | None) -> tuple[str, str]:
    """(text, label): the given file, or the built-in evaluation part."""
    if path is None:
        return corpus_part(CorpusPart.EVALUATION), "pydoc_data evaluation part"
    if path.is_dir():
        raise SmoothrotError(f"text file {path} is a directory, not a text file")
    if not path.exists():
        raise SmoothrotError(f"text file {path} does not exist")
    if not path.is_file():
        raise SmoothrotError(f"text file {path} is not a regular file")
    try:
        return path.read_text(encoding="utf-8"), str(path)
    except UnicodeDecodeError as exc:
        raise SmoothrotError(f"text file {path} is not UTF-8: {exc}") from exc


SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def system_prompt_ids(tokenizer, text: str = SYSTEM_PROMPT) -> list[int]:  # noqa: ANN001
    """The chat template's system turn for ``text`` (what a deployment puts before every
    conversation), or the plain text where the tokenizer has no chat template. The template
    runs in jinja's sandbox; one that the sandbox blocks or that fails is one line."""
    from jinja2.exceptions import TemplateError

    if getattr(tokenizer, "chat_template", None):
        turn = [{"role": "system", "content": text}]
        try:
            text = tokenizer.apply_chat_template(turn, tokenize=False)
        except TemplateError as exc:  # SecurityError (sandbox), syntax and runtime errors
            where = Path(getattr(tokenizer, "name_or_path", "") or ".")
            if (where / "chat_template.jinja").is_file():
                where = where / "chat_template.jinja"
            reason = (str(exc).strip().splitlines() or [""])[0][:200]
            raise SmoothrotError(
                f"the chat template of {where} cannot be applied ({type(exc).__name__}: {reason})"
            ) from exc
    return tokenizer.encode(text, add_special_tokens=False)


def evaluate_dir(
    directory: Path,
    config: EvalConfig,
    text_file: Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Perplexity of ``directory`` under ``config`` (with ``system_prompt`` the system turn comes
    before every window, scored tokens unchanged; ``kv_prefix`` overrides the model's kept KV
    prefix P at run time)."""
    c = config
    text, label = read_text(text_file)  # a wrong --text is refused before the model loads
    decoder = open_decoder(
        directory, c.backend, accuracy_level=c.accuracy_level, kv_prefix=c.kv_prefix
    )
    tokenizer = load_tokenizer(directory)
    ids = tokenizer.encode(text, add_special_tokens=False)
    prefix = system_prompt_ids(tokenizer) if c.system_prompt else []
    bos = bos_prefix(tokenizer)
    if bos and prefix[:1] != bos:  # a chat template may begin with BOS itself
        prefix = bos + prefix
    result = perplexity(lambda x: decoder.forward(x)[0], ids, config, progress, prefix)
    return {
        **asdict(result),
        "text": label,
        "text_sha256_16": text_digest(text),
        "prefix_tokens": len(prefix),
        "bos": bool(bos),
        "accuracy_level": c.accuracy_level,
        "backend": c.backend.value,
    }
