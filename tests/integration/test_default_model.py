"""The real default model (SmolLM2-135M-Instruct): ONNX equals torch, generation and perplexity."""

import numpy as np
import pytest
import torch

from smoothrot.compiler.config import EvalConfig
from smoothrot.compiler.measure.corpus import CorpusPart, corpus_part
from smoothrot.compiler.measure.evaluate import evaluate_dir
from smoothrot.compiler.measure.perplexity import perplexity
from smoothrot.compiler.runtime.ort_runner import OrtDecoder

pytestmark = pytest.mark.slow


def test_logits_match_torch_on_128_tokens(default_export, default_torch):
    model, tokenizer = default_torch
    ids = np.array([tokenizer.encode(corpus_part(CorpusPart.EVALUATION))[:128]])
    with torch.no_grad():
        ref = model(torch.from_numpy(ids)).logits.numpy()
    ours, _ = OrtDecoder(default_export).forward(ids)
    assert np.abs(ours - ref).max() <= 1e-3


def test_greedy_generation_matches_transformers(default_export, default_torch):
    model, tokenizer = default_torch
    prompt = tokenizer.encode("The Python assert statement is used to", add_special_tokens=False)
    with torch.no_grad():
        ref = model.generate(
            torch.tensor([prompt]), max_new_tokens=32, do_sample=False, pad_token_id=0
        )[0, len(prompt) :].tolist()
    ours = OrtDecoder(default_export).generate(prompt, 32, [tokenizer.eos_token_id])
    assert len(ref) == 32 and ours == ref


def test_perplexity_equals_torch(default_export, default_torch):
    model, tokenizer = default_torch
    config = EvalConfig()

    def torch_logits(ids: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(ids)).logits.numpy()

    ids = tokenizer.encode(corpus_part(CorpusPart.EVALUATION), add_special_tokens=False)
    ref = perplexity(torch_logits, ids, config, progress=False)
    ours = evaluate_dir(default_export, config, progress=False)
    assert ours["tokens"] == ref.tokens == 8 * 511
    assert abs(ours["ppl"] / ref.ppl - 1) <= 1e-3
    assert 5 < ours["ppl"] < 40  # a trained model on English prose, not a broken one
