"""``smoothrot generate``: greedy text generation with the KV cache on ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

from smoothrot.compiler.runner import OrtDecoder, load_tokenizer

__all__ = ["generate_text"]


def generate_text(directory: Path, prompt: str, max_new_tokens: int) -> str:
    decoder = OrtDecoder(directory)
    tokenizer = load_tokenizer(directory)
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    new = decoder.generate(ids, max_new_tokens, eos)
    return prompt + tokenizer.decode(new, skip_special_tokens=True)
