import json

import numpy as np
import onnx_ir as ir
import pytest
import torch

from smoothrot.compiler.config import DType, ExportConfig
from smoothrot.compiler.export.exporter import export_model
from smoothrot.compiler.modeldir.sources import load_torch_model, resolve_source
from smoothrot.compiler.runtime.ort_runner import OrtDecoder
from smoothrot.core.errors import SmoothrotError
from smoothrot.core.manifest import MANIFEST_NAME, load_manifest
from tests.conftest import TINY_ARCHITECTURES, _tiny_config


def _kv_shape(arch: str) -> tuple[int, int]:
    """(KV heads, head_dim) of the tiny model of ``arch``."""
    c = _tiny_config(arch)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return c.num_key_value_heads, head_dim


def _torch_logits(model, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(ids)).logits.numpy()


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_onnx_matches_torch_with_and_without_cache(tiny_model_dir, tiny_export, arch):
    model, _ = load_torch_model(resolve_source(tiny_model_dir(arch)))
    decoder = OrtDecoder(tiny_export(arch))
    ids = np.random.default_rng(0).integers(0, 49152, size=(2, 12))
    ref = _torch_logits(model, ids)
    # Prefill in one call (empty past) ...
    full, _ = decoder.forward(ids)
    np.testing.assert_allclose(full, ref, atol=1e-4, rtol=0)
    # ... and prefill 7 tokens, then feed the rest one at a time through the KV cache.
    logits, past = decoder.forward(ids[:, :7])
    steps = [logits]
    for t in range(7, 12):
        logits, past = decoder.forward(ids[:, t : t + 1], past)
        steps.append(logits)
    np.testing.assert_allclose(np.concatenate(steps, axis=1), ref, atol=1e-4, rtol=0)
    assert past[0].shape == (2, _kv_shape(arch)[0], 12, _kv_shape(arch)[1])


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_manifest_and_weight_names(tiny_export, arch):
    out = tiny_export(arch)
    manifest = load_manifest(out)
    assert manifest.architecture == _tiny_config(arch).model_type and manifest.opset >= 21
    assert (manifest.dims.layers, manifest.dims.kv_heads, manifest.dims.head_dim) == (
        2, *_kv_shape(arch)
    )  # fmt: skip
    assert manifest.inputs[:3] == ["input_ids", "attention_mask", "position_ids"]
    assert manifest.outputs[0] == "logits" and len(manifest.outputs) == 1 + 2 * 2
    # 7 Linear layers per block + lm_head, each a MatMul weight of shape [K_in, N_out].
    assert len(manifest.weights) == 2 * 7 + 1
    model = ir.load(out / "model.onnx")
    assert model.opset_imports[""] >= 21
    inits = model.graph.initializers
    assert inits[manifest.weights["model.layers.1.mlp.down_proj"]].shape.dims == (96, 64)
    assert inits[manifest.weights["lm_head"]].shape.dims == (64, 49152)
    assert (out / "model.onnx.data").stat().st_size > 4 * 64 * 49152  # weights are external
    assert (out / "tokenizer.json").is_file() or (out / "tokenizer_config.json").is_file()


def test_refuses_existing_directory_that_is_not_ours(tmp_path, tiny_model_dir):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(SmoothrotError, match="not a smoothrot output"):
        export_model(resolve_source(tiny_model_dir("llama")), out, ExportConfig())
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious"]  # no partial output


def test_replaces_our_own_output(tmp_path, tiny_export, tiny_model_dir):
    out = tmp_path / "again"
    out.mkdir()
    (out / MANIFEST_NAME).write_text("{}")
    export_model(resolve_source(tiny_model_dir("llama")), out, ExportConfig())
    assert json.loads((out / MANIFEST_NAME).read_text())["architecture"] == "llama"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again"]


def test_fp16_export(tmp_path, tiny_model_dir):
    out = tmp_path / "fp16"
    export_model(resolve_source(tiny_model_dir("llama")), out, ExportConfig(dtype=DType.FP16))
    manifest = load_manifest(out)
    assert manifest.dtype is DType.FP16
    model = ir.load(out / "model.onnx")
    b = model.graph.initializers[manifest.weights["model.layers.0.self_attn.q_proj"]]
    assert b.dtype == ir.DataType.FLOAT16
    assert model.graph.inputs[3].dtype == ir.DataType.FLOAT16  # past.0.key


def test_export_config_validation():
    with pytest.raises(ValueError, match="opset"):
        ExportConfig(opset=17)
