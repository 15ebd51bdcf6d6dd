"""``smoothrot generate``: greedy text generation with the KV cache (ONNX Runtime or TensorRT)."""

from __future__ import annotations

from pathlib import Path

from smoothrot.compiler.config import Backend
from smoothrot.compiler.runtime.decoders import open_decoder
from smoothrot.compiler.runtime.ort_runner import load_tokenizer
from smoothrot.core.errors import SmoothrotError

__all__ = ["generate_text"]


def generate_text(
    directory: Path, prompt: str, max_new_tokens: int, backend: Backend = Backend.ORT
) -> str:
    """``prompt`` and its greedy continuation of up to ``max_new_tokens`` tokens."""
    if not prompt.strip():  # before the model loads: greedy decoding needs a token to follow
        raise SmoothrotError("--prompt is empty; give the text to continue")
    decoder = open_decoder(directory, backend)
    tokenizer = load_tokenizer(directory)
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    new = decoder.generate(ids, max_new_tokens, eos)
    return prompt + tokenizer.decode(new, skip_special_tokens=True)
