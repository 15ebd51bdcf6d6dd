"""Perplexity over non-overlapping windows, for any backend that maps ids to logits."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from smoothrot.compiler.config import EvalConfig
from smoothrot.core.errors import SmoothrotError

__all__ = ["PerplexityResult", "bos_prefix", "perplexity", "window_nll", "windows"]

LogitsFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class PerplexityResult:
    ppl: float
    nll: float  # mean negative log-likelihood per predicted token, nats
    tokens: int  # predicted tokens (windows × (seq − 1))
    windows: int
    seq: int


def bos_prefix(tokenizer: Any) -> list[int]:
    """``[bos]`` where the tokenizer puts a BOS token before every text it encodes (Gemma,
    Llama 3), else ``[]`` (SmolLM2, Qwen). The protocol puts it before every window as context,
    as the model saw in training; the window's own tokens are scored either way."""
    bos = getattr(tokenizer, "bos_token_id", None)
    ids = tokenizer.encode("a")
    return [int(bos)] if bos is not None and ids and ids[0] == bos else []


def windows(token_ids: Sequence[int], config: EvalConfig) -> np.ndarray:
    """``[windows, seq]`` non-overlapping windows from the start of ``token_ids``."""
    need = config.seq * config.windows
    if len(token_ids) < need:
        raise SmoothrotError(
            f"text too short: {len(token_ids)} tokens, need {need} "
            f"({config.windows} windows x {config.seq})"
        )
    return np.asarray(token_ids[:need], dtype=np.int64).reshape(config.windows, config.seq)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def window_nll(logits: np.ndarray, row: np.ndarray) -> float:
    """Summed NLL (nats) of ``row[1:]`` under ``logits [len(row), V]`` (``row[0]`` is context)."""
    logp = _log_softmax(logits[:-1])
    return -float(logp[np.arange(len(row) - 1), row[1:]].sum())


def perplexity(
    logits_fn: LogitsFn,
    token_ids: Sequence[int],
    config: EvalConfig,
    progress: bool = True,
    prefix_ids: Sequence[int] = (),
) -> PerplexityResult:
    """exp(mean NLL) of each next token inside each window (the window's first token is context).

    ``prefix_ids`` (e.g. a system prompt) is put before every window as extra context; only the
    window's own tokens are scored, so results with and without a prefix count the same tokens.
    """
    batches = windows(token_ids, config)
    prefix = np.asarray(prefix_ids, np.int64)
    total = 0.0
    for row in tqdm(batches, desc="perplexity", unit="window", disable=not progress):
        ids = np.concatenate([prefix, row])[None, :]
        total += window_nll(logits_fn(ids)[0, len(prefix) :], row)
    count = config.windows * (config.seq - 1)
    nll = total / count
    return PerplexityResult(float(np.exp(nll)), nll, count, config.windows, config.seq)
