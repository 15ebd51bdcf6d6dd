"""The lazy checkpoint reader: bf16 / fp16 / fp32 shards read tensor by tensor equal what torch
reads, a tied lm_head is served from the embedding, and a checkpoint that does not match its
config is refused naming the tensor."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from smoothrot.compiler.modeldir.sources import resolve_source
from smoothrot.compiler.stream.checkpoint import EMBEDDING, LM_HEAD, open_checkpoint
from smoothrot.core.errors import SmoothrotError


def _sharded(src, dst, dtype, tie=False):
    """``src``'s weights in ``dtype``, split over two shards with an index."""
    dst.mkdir()
    state = {k: v.to(dtype) for k, v in load_file(src / "model.safetensors").items()}
    if tie:
        state.pop(LM_HEAD)
    names = sorted(state)
    shards = {"a.safetensors": names[::2], "b.safetensors": names[1::2]}
    for file, keys in shards.items():
        save_file({k: state[k].contiguous() for k in keys}, dst / file)
    index = {"metadata": {}, "weight_map": {k: f for f, ks in shards.items() for k in ks}}
    (dst / "model.safetensors.index.json").write_text(json.dumps(index))
    config = json.loads((src / "config.json").read_text())
    config["tie_word_embeddings"] = tie
    (dst / "config.json").write_text(json.dumps(config))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if (src / name).is_file():
            (dst / name).write_bytes((src / name).read_bytes())
    return state


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_reads_every_tensor_as_torch_does(dtype, tiny_model_dir, tmp_path):
    state = _sharded(tiny_model_dir("llama"), tmp_path / "m", dtype)
    with open_checkpoint(resolve_source(tmp_path / "m")) as ckpt:
        assert not ckpt.tied
        assert ckpt.nbytes == sum(t.numel() * t.element_size() for t in state.values())
        for name, tensor in state.items():
            got = ckpt.get(name)
            assert got.dtype == np.float32
            np.testing.assert_array_equal(got, tensor.float().numpy(), err_msg=name)


def test_tied_lm_head_is_the_embedding(tiny_model_dir, tmp_path):
    _sharded(tiny_model_dir("llama"), tmp_path / "m", torch.bfloat16, tie=True)
    with open_checkpoint(resolve_source(tmp_path / "m")) as ckpt:
        assert ckpt.tied
        np.testing.assert_array_equal(ckpt.get(LM_HEAD), ckpt.get(EMBEDDING))


def test_config_that_does_not_match_is_refused(tiny_model_dir, tmp_path):
    _sharded(tiny_model_dir("llama"), tmp_path / "m", torch.bfloat16)
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["intermediate_size"] = 128
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        SmoothrotError, match=r"mlp\.down_proj\.weight is \[64, 96\] in the checkpoint"
    ):
        open_checkpoint(resolve_source(tmp_path / "m"))
    config["intermediate_size"], config["num_hidden_layers"] = 96, 3
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        SmoothrotError, match=r"needs model\.layers\.2\..*which the checkpoint lacks"
    ):
        open_checkpoint(resolve_source(tmp_path / "m"))
