"""unfuse_projections: Phi-3's fused q/k/v and gate/up split into Mistral's layout, exactly; the
variants whose attention Mistral would compute differently are refused by name."""

import pytest
import torch

from smoothrot.compiler.export.unfuse import unfuse_projections
from smoothrot.core.errors import SmoothrotError

SHAPE = dict(
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=512,
    pad_token_id=0,
)


def _phi3(**extra):
    # transformers' model classes are imported inside tests: importing them may import Triton,
    # which tests/plugins/conftest.py must be first to import
    from transformers import Phi3Config, Phi3ForCausalLM

    torch.manual_seed(0)
    return Phi3ForCausalLM(Phi3Config(**SHAPE, **extra)).eval()


@pytest.mark.parametrize("tied", [False, True])
def test_split_model_computes_the_same_logits(tied):
    model = _phi3(tie_word_embeddings=tied, sliding_window=8)
    ids = torch.randint(0, 512, (2, 24))  # longer than the window
    with torch.no_grad():
        ref = model(ids).logits
        split = unfuse_projections(model)
        ours = split(ids).logits
    assert type(split).__name__ == "MistralForCausalLM"
    names = {n for n, _ in split.named_parameters()}
    assert "model.layers.1.self_attn.k_proj.weight" in names
    assert not any("qkv_proj" in n or "gate_up_proj" in n for n in names)
    assert torch.equal(ours, ref)


def test_other_models_pass_through_unchanged():
    from transformers import LlamaConfig, LlamaForCausalLM

    llama = LlamaForCausalLM(LlamaConfig(**SHAPE))
    assert unfuse_projections(llama) is llama


@pytest.mark.parametrize(
    ("extra", "refusal"),
    [
        ({"partial_rotary_factor": 0.75}, "partial_rotary_factor 0.75"),
        (
            {
                "rope_parameters": {
                    "rope_type": "longrope",
                    "rope_theta": 10000.0,
                    "short_factor": [1.0] * 8,
                    "long_factor": [1.0] * 8,
                    "original_max_position_embeddings": 64,
                },
                "max_position_embeddings": 128,
            },
            "rope_type 'longrope'",
        ),
    ],
)
def test_phi3_variants_mistral_cannot_compute_are_refused(extra, refusal):
    with pytest.raises(SmoothrotError, match=refusal):
        unfuse_projections(_phi3(**extra))
