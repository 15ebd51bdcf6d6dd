"""A streamed compile's memory is bounded by one layer: a 16-layer ~200M-parameter checkpoint
peaks within one layer's fp32 weights of its 2-layer twin; a compile that cannot fit is refused
up front with the estimate, in one line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from smoothrot.compiler.compile import compile_model
from smoothrot.compiler.config import CompileConfig, Recipe
from smoothrot.compiler.stream import memory
from smoothrot.core.errors import SmoothrotError

HIDDEN, MLP = 1024, 2816
LAYER_BYTES = 4 * (4 * HIDDEN * HIDDEN + 3 * HIDDEN * MLP)  # one layer's weights in fp32


def _checkpoint(path, layers, tokenizer):
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        hidden_size=HIDDEN,
        intermediate_size=MLP,
        num_hidden_layers=layers,
        num_attention_heads=16,
        num_key_value_heads=4,
        vocab_size=49152,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(path, max_shard_size="100MB")  # sharded: read through the index
    tokenizer.save_pretrained(path)
    del model
    assert (path / "model.safetensors.index.json").is_file()
    return path


def _peaks(model, out):
    argv = ["compile", "--model", str(model), "--recipe", "w4a16", "--algorithm", "rtn"]
    argv += ["--calibration-tokens", "512", "--no-eval", "-o", str(out)]
    child = [sys.executable, "-m", "smoothrot.tools.cli", *argv]
    done = subprocess.run(child, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    stages = json.loads((out / "report.json").read_text())["stages"]
    return {row["stage"]: row["peak_rss_mb"] * 2**20 for row in stages}


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_depth(tmp_path, default_tokenizer):
    shallow = _peaks(_checkpoint(tmp_path / "m2", 2, default_tokenizer), tmp_path / "o2")
    deep = _peaks(_checkpoint(tmp_path / "m16", 16, default_tokenizer), tmp_path / "o16")
    assert deep["layers"] - shallow["layers"] < LAYER_BYTES, (shallow, deep)
    assert max(deep.values()) - max(shallow.values()) < LAYER_BYTES, (shallow, deep)


def test_a_compile_that_cannot_fit_is_refused_up_front(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda: 2**20)
    config = CompileConfig(Recipe.W4A16, calibration_tokens=512, evaluate=False)
    with pytest.raises(SmoothrotError, match=r"needs ~\d+\.\d GB .* 0\.0 GB available"):
        compile_model(tmp_path / "o", config, model=str(tiny_model_dir("llama")))
    assert not (tmp_path / "o").exists()
    assert not list(tmp_path.glob(".o.partial-*"))
