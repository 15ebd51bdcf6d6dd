"""The flat-KV-cache wrapper the exporter traces.

torch.export cannot take a ``DynamicCache`` as a graph input, so the wrapper takes the cache as
a flat list ``[past.0.key, past.0.value, past.1.key, ...]`` (each ``[batch, kv_heads, past,
head_dim]``), builds the cache, and returns the logits followed by the flat present tensors.
A plain (non-sliding) cache is used on purpose: the present tensors carry the whole history and
any sliding window is applied by the model's attention mask, so one graph serves every step.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import DynamicCache

__all__ = ["FlatCacheDecoder", "io_names"]


def io_names(layers: int) -> tuple[list[str], list[str]]:
    """Graph input and output names for a model with ``layers`` decoder layers."""
    kv = [(i, t) for i in range(layers) for t in ("key", "value")]
    inputs = ["input_ids", "attention_mask", "position_ids"] + [f"past.{i}.{t}" for i, t in kv]
    outputs = ["logits"] + [f"present.{i}.{t}" for i, t in kv]
    return inputs, outputs


class FlatCacheDecoder(torch.nn.Module):
    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model
        self.layers = model.config.num_hidden_layers

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        past: list[torch.Tensor],
    ) -> tuple[torch.Tensor, ...]:
        cache = DynamicCache()
        for i in range(self.layers):
            cache.update(past[2 * i], past[2 * i + 1], i)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
        )
        present: list[torch.Tensor] = []
        for layer in out.past_key_values.layers:
            present += [layer.keys, layer.values]
        return (out.logits, *present)
