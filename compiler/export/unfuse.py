"""Split fused projections before tracing: Phi-3 as the Mistral-layout model it computes.

Phi-3 stores q/k/v as one ``qkv_proj`` and gate/up as one ``gate_up_proj``, then slices their
outputs (``[q | k | v]``, ``[gate | up]``). Otherwise its decoder is Mistral's: pre-norm
RMSNorm, RoPE, grouped K/V heads, an optional sliding window, SwiGLU, a final norm. Splitting
the weights row-wise gives q/k/v and gate/up their own MatMuls, which is exact (the same dot
products) and is the layout every pass understands — each projection also gets its own INT4
grouping. A Phi-3 whose attention differs from Mistral's (partial rotary embedding as in
Phi-4-mini, LongRoPE scaling as in the 128k variants) is refused by name: converting it would
silently change its positions.
"""

from __future__ import annotations

from typing import Any

import torch

from smoothrot.core.errors import SmoothrotError

__all__ = ["FUSED_ARCHITECTURES", "unfuse_projections"]

FUSED_ARCHITECTURES = ("phi3",)


def _rope_parameters(config: Any) -> dict[str, Any]:
    """Phi-3's RoPE as a Mistral config states it; refuses what Mistral would compute otherwise."""
    rope = dict(getattr(config, "rope_parameters", None) or {})
    rope_type = rope.get("rope_type", "default")
    if rope_type != "default":
        raise SmoothrotError(f"Phi-3 with rope_type {rope_type!r} is not supported (only default)")
    partial = rope.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0))
    if partial not in (None, 1.0):
        raise SmoothrotError(
            f"Phi-3 with partial_rotary_factor {partial} is not supported (RoPE on every dim only)"
        )
    theta = rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    return {"rope_type": "default", "rope_theta": theta}


def _heads(config: Any) -> tuple[int, int, int]:
    """(query heads, K/V heads, head_dim) of ``config``."""
    heads = config.num_attention_heads
    kv = config.num_key_value_heads or heads
    return heads, kv, getattr(config, "head_dim", None) or config.hidden_size // heads


def _mistral_config(config: Any) -> Any:
    from transformers import MistralConfig

    heads, kv, head_dim = _heads(config)
    return MistralConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        head_dim=head_dim,
        hidden_act=config.hidden_act,
        max_position_embeddings=config.max_position_embeddings,
        rms_norm_eps=config.rms_norm_eps,
        rope_parameters=_rope_parameters(config),
        sliding_window=getattr(config, "sliding_window", None),
        tie_word_embeddings=config.tie_word_embeddings,
        attention_dropout=0.0,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    )


def _split_state(model: torch.nn.Module, config: Any) -> dict[str, torch.Tensor]:
    """Phi-3's parameters under Mistral's names, fused weights split along their outputs."""
    heads, kv, head_dim = _heads(config)
    q_rows, kv_rows = heads * head_dim, kv * head_dim
    state: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        if name.endswith("self_attn.qkv_proj.weight"):
            stem = name.removesuffix("qkv_proj.weight")
            q, k, v = torch.split(tensor, [q_rows, kv_rows, kv_rows], dim=0)
            state |= {f"{stem}q_proj.weight": q, f"{stem}k_proj.weight": k}
            state[f"{stem}v_proj.weight"] = v
        elif name.endswith("mlp.gate_up_proj.weight"):
            stem = name.removesuffix("gate_up_proj.weight")
            gate, up = torch.chunk(tensor, 2, dim=0)  # Phi-3: gate first, then up
            state |= {f"{stem}gate_proj.weight": gate, f"{stem}up_proj.weight": up}
        elif name.endswith(("qkv_proj.bias", "gate_up_proj.bias")):
            raise SmoothrotError(f"Phi-3 with a bias on {name} is not supported")
        else:
            state[name] = tensor
    return state


def unfuse_projections(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` itself where nothing is fused; a Phi-3 as the equivalent Mistral model."""
    config = model.config
    if config.model_type not in FUSED_ARCHITECTURES:
        return model
    from transformers import MistralForCausalLM

    dtype = next(model.parameters()).dtype
    with torch.device("meta"):
        split = MistralForCausalLM(_mistral_config(config))
    state = _split_state(model, config)
    missing, unexpected = split.load_state_dict(state, strict=False, assign=True)
    missing = [m for m in missing if not (m == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise SmoothrotError(
            f"Phi-3 does not map onto the Mistral layout: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}"
        )
    if config.tie_word_embeddings:
        split.tie_weights()
    split.to(dtype)
    # buffers (RoPE's inverse frequencies) were made on the meta device: recompute them
    split.model.rotary_emb = type(split.model.rotary_emb)(split.config)
    return split.eval()
